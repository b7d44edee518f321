"""The config.pbtxt Triton runs with: the repository's own, merged with the fields Tollway owns from the one
it renders (`tollway model-config`, the pod's init container). Parsed back with Triton's own proto."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from tollway.cli import main
from tollway.render.model_config import OWNED_FIELDS, merge_config

VLLM_REPOSITORY = """
name: "vllm_model"
backend: "vllm"
max_batch_size: 32
model_transaction_policy { decoupled: true }
input [ { name: "text_input" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "text_output" data_type: TYPE_STRING dims: [ -1 ] } ]
parameters { key: "REPORT_CUSTOM_METRICS" value: { string_value: "yes" } }
instance_group [ { count: 4 kind: KIND_MODEL } ]
optimization { cuda { graphs: true } }
"""
RENDERED = """
name: "assistant"
backend: "vllm"
max_batch_size: 0
version_policy: { specific: { versions: [ 2 ] } }
instance_group [ { count: 1 kind: KIND_GPU gpus: [ 0 ] } ]
dynamic_batching { priority_levels: 3 default_priority_level: 3 }
response_cache { enable: false }
"""


def parsed(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_what_tollway_does_not_own_is_kept_and_what_it_owns_is_its_own() -> None:
    merged = parsed(merge_config(VLLM_REPOSITORY, RENDERED))
    assert [tensor.name for tensor in merged.input] == ["text_input"]
    assert [tensor.name for tensor in merged.output] == ["text_output"]
    assert merged.parameters["REPORT_CUSTOM_METRICS"].string_value == "yes"
    assert merged.model_transaction_policy.decoupled  # not rendered (no spec.model.openai): the repository's
    assert merged.optimization.cuda.graphs  # no TensorRT precision in the spec: the repository's
    assert (
        merged.name == "assistant" and merged.max_batch_size == 0
    )  # the spec's, though 0 is protobuf's default
    assert [(group.count, group.kind) for group in merged.instance_group] == [
        (1, model_config_pb2.ModelInstanceGroup.KIND_GPU)
    ]
    assert merged.dynamic_batching.priority_levels == 3
    assert list(merged.version_policy.specific.versions) == [2]


def test_the_repositorys_scheduler_and_platform_give_way() -> None:
    repository = 'platform: "tensorrt_plan" sequence_batching { max_sequence_idle_microseconds: 5 }'
    merged = parsed(merge_config(repository, RENDERED))
    assert merged.platform == "" and merged.backend == "vllm"
    assert merged.WhichOneof("scheduling_choice") == "dynamic_batching"


def test_a_policy_tollway_renders_replaces_the_repositorys() -> None:
    rendered = (
        RENDERED
        + 'optimization { execution_accelerators { gpu_execution_accelerator: [ { name: "tensorrt" } ] } }'
    )
    merged = parsed(merge_config(VLLM_REPOSITORY, rendered))
    assert not merged.optimization.cuda.graphs
    assert merged.optimization.execution_accelerators.gpu_execution_accelerator[0].name == "tensorrt"


def test_every_owned_field_is_a_model_config_field() -> None:
    assert set(OWNED_FIELDS) <= {field.name for field in model_config_pb2.ModelConfig.DESCRIPTOR.fields}


def test_the_command_links_a_claims_versions_and_refuses_a_config_it_cannot_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, target, rendered = tmp_path / "claim" / "llm", tmp_path / "models" / "llm", tmp_path / "rendered"
    for version in ("1", "2"):
        (source / version).mkdir(parents=True)
    (source / "config.pbtxt").write_text(VLLM_REPOSITORY)
    rendered.write_text(RENDERED)
    args = ["model-config", f"--rendered={rendered}", f"--model-dir={target}", f"--source={source}", "1", "2"]
    assert main(args) == 0
    assert (target / "1").resolve() == source / "1" and (target / "2").resolve() == source / "2"
    assert (
        parsed((target / "config.pbtxt").read_text()).parameters["REPORT_CUSTOM_METRICS"].string_value
        == "yes"
    )
    (source / "config.pbtxt").write_text("this is not a model config {")
    assert main(args) == 1
    assert "is not a Triton model config" in capsys.readouterr().err
