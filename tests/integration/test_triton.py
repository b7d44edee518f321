"""The model config Tollway renders, loaded and honoured by the real Triton server (CPU, Python backend)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton_http

from tollway.api import ModelDeployment
from tollway.api.parse import parse
from tollway.observe.serving import queue_depth
from tollway.translate.serving import plan_serving

from builders import model_deployment
from testbed.kube import eventually
from testbed.processes import free_port
from testbed.triton import running

TIER_PRIORITIES = (1, 2, 3)


def echo_serving(**changes: Any) -> Any:
    spec = {
        "spec.model.name": "echo",
        "spec.model.maxBatchSize": 8,
        "spec.versions": [{"version": "2"}, {"version": "1"}],
        "spec.aliases": {"latest": "2"},
        "spec.triton.gpus": 0,
        "spec.batching": {"maxQueueDelayMicroseconds": 1000, "preferredBatchSizes": [2, 4]},
        "spec.queue": {"maxQueueSize": 16, "timeoutMicroseconds": 5000000},
        "spec.cache": {"enabled": True, "sizeBytes": 1048576},
    }
    resource = parse(ModelDeployment, model_deployment("echo", **{**spec, **changes}))
    return plan_serving(resource, TIER_PRIORITIES, "unused")


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with running(tmp_path_factory.mktemp("triton"), echo_serving()) as server:
        yield server


def test_every_listed_version_is_ready(triton: Any) -> None:
    client = triton_http.InferenceServerClient(triton.http)
    assert client.is_server_ready()
    assert client.is_model_ready("echo", "1") and client.is_model_ready("echo", "2")
    index = {entry["version"]: entry["state"] for entry in client.get_model_repository_index()}
    assert index == {"1": "READY", "2": "READY"}


def test_triton_reports_the_config_the_model_deployment_asked_for(triton: Any) -> None:
    config = triton_http.InferenceServerClient(triton.http).get_model_config("echo")
    assert config["max_batch_size"] == 8
    assert config["version_policy"] == {"specific": {"versions": [2, 1]}}
    assert [(group["kind"], group["count"]) for group in config["instance_group"]] == [("KIND_CPU", 1)]
    batching = config["dynamic_batching"]
    assert batching["preferred_batch_size"] == [2, 4]
    assert batching["max_queue_delay_microseconds"] == 1000
    assert (batching["priority_levels"], batching["default_priority_level"]) == (3, 3)
    assert batching["default_queue_policy"] == {
        "timeout_action": "REJECT",
        "default_timeout_microseconds": 5000000,
        "allow_timeout_override": True,
        "max_queue_size": 16,
    }
    assert config["response_cache"] == {"enable": True}


def test_inference_works_at_every_version_and_priority(triton: Any) -> None:
    client = triton_http.InferenceServerClient(triton.http)
    for version, priority in (("1", 1), ("2", 3)):
        tensor = triton_http.InferInput("INPUT", [1, 3], "FP32")
        tensor.set_data_from_numpy(np.array([[1.0, 2.0, 3.0]], dtype=np.float32))
        result = client.infer("echo", [tensor], model_version=version, priority=priority)
        assert result.as_numpy("OUTPUT").tolist() == [[float(version) * value for value in (1, 2, 3)]]


def test_metrics_expose_queue_depth_and_latency_quantiles(triton: Any) -> None:
    test_inference_works_at_every_version_and_priority(triton)
    text = triton.metrics_text()
    assert re.search(
        r'^nv_inference_pending_request_count\{model="echo",version="2"\} \d+', text, re.MULTILINE
    )
    quantiles = set(
        re.findall(r'nv_inference_queue_summary_us\{model="echo",version="2",quantile="([0-9.]+)"\}', text)
    )
    assert quantiles == {"0.5", "0.95", "0.99"}


def test_the_burst_floor_reads_a_pods_queue_from_its_metrics_page(triton: Any) -> None:
    assert queue_depth(f"http://{triton.metrics}/metrics", "echo") == 0.0  # a number: nothing waits at rest
    assert queue_depth(f"http://{triton.metrics}/metrics", "other") == 0.0  # a model it does not serve
    assert queue_depth(f"http://127.0.0.1:{free_port()}/metrics", "echo") is None  # nobody there


def test_a_version_that_fails_to_load_is_reported_with_its_reason(tmp_path: Path) -> None:
    with running(tmp_path, echo_serving(), broken=[2]) as server:
        client = triton_http.InferenceServerClient(server.http)

        def settled() -> dict[str, Any] | None:
            index = {entry["version"]: entry for entry in client.get_model_repository_index()}
            return (
                None if any(entry["state"] in ("LOADING", "UNLOADING") for entry in index.values()) else index
            )

        index = eventually(settled, timeout=30)
        assert index["2"]["state"] == "UNAVAILABLE"
        assert "broken on purpose" in index["2"]["reason"]
        # Triton loads a model's versions together: one failure leaves none of them serving.
        assert index["1"]["state"] == "UNAVAILABLE"
        assert not client.is_server_ready()  # strict readiness: the pod would not take traffic


REPOSITORY_CONFIG = """
name: "whatever-the-repository-calls-it"
platform: "onnxruntime_onnx"
max_batch_size: 64
parameters { key: "note" value { string_value: "kept from the repository" } }
dynamic_batching { max_queue_delay_microseconds: 99 }
"""


def test_the_repositorys_own_config_is_merged_with_the_fields_tollway_owns(tmp_path: Path) -> None:
    """vLLM and TensorRT-LLM models need their repository's config.pbtxt (backend parameters, tensors):
    `tollway model-config`, as the pod's init container runs it, keeps what Tollway does not own and
    replaces what it does, and the real Triton loads the result."""
    with running(tmp_path, echo_serving(), own_config=REPOSITORY_CONFIG) as server:
        client = triton_http.InferenceServerClient(server.http)
        eventually(lambda: client.is_model_ready("echo", "2"), timeout=60)
        config = client.get_model_config("echo")
    assert config["parameters"] == {"note": {"string_value": "kept from the repository"}}
    assert config["name"] == "echo" and config["backend"] == "python" and config["platform"] == ""
    assert config["max_batch_size"] == 8  # the spec's, not the repository's
    batching = config["dynamic_batching"]
    assert batching["max_queue_delay_microseconds"] == 1000 and batching["priority_levels"] == 3
