"""What keeps in-cluster traffic on the gateway's path, on real components: the rendered NetworkPolicies
through the real API server (validated there, and left alone by a no-op reconcile); Redis refusing a client
without its password while the gateway limits through it; Triton's restricted APIs refused without the
operator's key, and the operator reading a model's state with it. Whether a CNI enforces the policies is
beyond this bed: it has no kubelet and no pod network."""

from __future__ import annotations

import base64
import json
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import tritonclient.grpc as triton_grpc
from kubernetes.config import kube_config
from tritonclient.utils import InferenceServerException

from tollway import documents
from tollway.api import ModelDeployment
from tollway.api.parse import parse
from tollway.ir.names import TRITON_KEY, TRITON_KEY_HEADER
from tollway.k8s import apply
from tollway.observe.serving import model_state
from tollway.translate import translate_all
from tollway.translate.serving import plan_serving

from builders import model_deployment
from testbed.gateway import Bed, bed, echo_model, secret, tier
from testbed.kube import Cluster, eventually, operator
from testbed.triton import RunningTriton, infer_body, running

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = f"network-test-{os.getpid()}"
ADMIN_KEY = "the-operators-admin-key"
DAILY = 3


def test_the_rendered_network_policies_are_valid_and_a_second_apply_sends_nothing(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(cluster.kubeconfig))
    translation = translate_all(documents.load([ROOT / "examples"]), datetime.now(UTC), fresh="test")
    rendered = [
        *(manifest for _, result in translation.resources for manifest in result.manifests),
        *(manifest for gateway in translation.gateways.values() for manifest in gateway.manifests),
    ]
    policies = [_here(manifest) for manifest in rendered if manifest["kind"] == "NetworkPolicy"]
    assert {policy["metadata"]["name"] for policy in policies} == {
        "assistant-cache",  # its shared answer cache: the model's pods only
        "assistant-triton",
        "chat-triton",
        "embed-triton",
        "search-triton",
        "tollway-gateway-ratelimit",
        "tollway-gateway-redis",
    }
    cluster.namespace(NAMESPACE)
    assert [apply.apply(policy) for policy in policies] == [True] * len(policies)
    assert [apply.apply(policy) for policy in policies] == [False] * len(policies)  # held as rendered
    live = cluster.get("networkpolicy", "chat-triton", NAMESPACE)
    assert live["spec"]["podSelector"] == {
        "matchLabels": {"app.kubernetes.io/instance": "chat", "app.kubernetes.io/name": "triton"}
    }


def _here(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest in this test's namespace, without owners (none exist here: the garbage collector would
    remove what they own)."""
    metadata = {key: value for key, value in manifest["metadata"].items() if key != "ownerReferences"}
    return {**manifest, "metadata": {**metadata, "namespace": NAMESPACE}}


# Redis


def _documents(test_bed: Bed) -> list[dict[str, Any]]:
    return [
        echo_model(),
        tier("daily", 3, {"requestsPerDay": DAILY}, ["echo"]),
        secret("dana", "daily", "tw-test-dana-key"),
    ]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    with bed(tmp_path_factory.mktemp("gateway"), _documents) as test_bed:
        yield test_bed


def _redis(port: int, *commands: list[str]) -> list[bytes]:
    """Each command's first reply line, sent over one connection in Redis's wire protocol."""
    replies = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        reader = connection.makefile("rb")
        for command in commands:
            encoded = f"*{len(command)}\r\n" + "".join(f"${len(part)}\r\n{part}\r\n" for part in command)
            connection.sendall(encoded.encode())
            replies.append(reader.readline().rstrip())
    return replies


def test_redis_refuses_a_client_without_the_password(gateway: Bed) -> None:
    refused, wrong = _redis(gateway.redis_port, ["PING"], ["AUTH", "not-the-password"])
    assert refused.startswith(b"-NOAUTH")
    assert wrong.startswith(b"-WRONGPASS")
    assert _redis(gateway.redis_port, ["AUTH", gateway.redis_password], ["PING"]) == [b"+OK", b"+PONG"]


def test_the_gateway_limits_through_a_redis_that_asks_for_a_password(gateway: Bed) -> None:
    replies = [
        gateway.call("/v1/models/echo/infer", key="tw-test-dana-key", body=infer_body())
        for _ in range(DAILY + 1)
    ]
    # failOpen is the tiers' default: without Redis the service would admit all four
    assert [reply.status for reply in replies] == [200] * DAILY + [429]
    counters = _redis(gateway.redis_port, ["AUTH", gateway.redis_password], ["DBSIZE"])
    assert counters[1] != b":0"


# Triton


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningTriton]:
    serving = plan_serving(parse(ModelDeployment, _echo()), (), "unused")
    with running(tmp_path_factory.mktemp("triton"), serving, admin_key=ADMIN_KEY) as server:
        yield server


def _echo() -> dict[str, Any]:
    return model_deployment(
        "echo",
        **{
            "metadata.namespace": NAMESPACE,
            "spec.model.name": "echo",
            "spec.model.repository": "pvc://models/echo",
            "spec.versions": [{"version": "1"}],
            "spec.aliases": {"latest": "1"},
            "spec.triton.gpus": 0,
        },
    )


def _post(triton: RunningTriton, path: str, headers: dict[str, str] | None = None, body: Any = None) -> int:
    request = urllib.request.Request(
        f"http://{triton.http}{path}",
        data=json.dumps(body or {}).encode(),
        headers=headers or {},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


@pytest.mark.parametrize(
    "path",
    ["/v2/repository/index", "/v2/repository/models/echo/unload", "/v2/logging", "/v2/trace/setting"],
)
def test_tritons_restricted_http_apis_refuse_a_request_without_the_key(
    triton: RunningTriton, path: str
) -> None:
    assert _post(triton, path) == 403
    assert _post(triton, path, {TRITON_KEY_HEADER: "a-guess"}) == 403


def test_tritons_restricted_apis_answer_the_key_and_inference_needs_none(triton: RunningTriton) -> None:
    assert _post(triton, "/v2/repository/index", {TRITON_KEY_HEADER: ADMIN_KEY}) == 200
    assert _post(triton, "/v2/models/echo/infer", body=infer_body()) == 200
    client = triton_grpc.InferenceServerClient(triton.grpc)
    with pytest.raises(InferenceServerException, match="restricted"):
        client.get_model_repository_index()
    with pytest.raises(InferenceServerException, match="restricted"):
        client.unload_model("echo")
    # gRPC metadata carries the header under Triton's prefix
    index = client.get_model_repository_index(
        headers={f"triton-grpc-protocol-{TRITON_KEY_HEADER}": ADMIN_KEY}
    )
    assert [model.name for model in index.models] == ["echo"]


def test_the_models_state_is_read_from_tritons_repository_index_with_the_key(triton: RunningTriton) -> None:
    found = model_state(triton.http, "echo", ["1", "7"], ADMIN_KEY)
    assert found.reachable and found.error == ""
    assert [(state.version, state.state) for state in found.versions] == [("1", "READY"), ("7", "MISSING")]
    refused = model_state(triton.http, "echo", ["1"], "a-guess")
    assert not refused.reachable
    assert refused.error.startswith(f"{triton.http}: [403] ") and "restricted" in refused.error
    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        nowhere = f"127.0.0.1:{unused.getsockname()[1]}"
    gone = model_state(nowhere, "echo", ["1"], ADMIN_KEY)
    assert not gone.reachable and "refused" in gone.error


def test_the_operator_reads_the_models_state_with_the_key_its_secret_holds(
    cluster: Cluster, triton: RunningTriton, tmp_path_factory: pytest.TempPathFactory
) -> None:
    cluster.namespace(NAMESPACE)
    # The key Triton started with, in the Secret the operator generates unless it exists: it keeps this one.
    key = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "echo-triton", "namespace": NAMESPACE}}
    cluster.apply({**key, "data": {TRITON_KEY: base64.b64encode(ADMIN_KEY.encode()).decode()}})
    with operator(cluster, NAMESPACE, tmp_path_factory.mktemp("operator"), "--triton-address", triton.http):
        cluster.apply(_echo())

        def versions() -> list[Any] | None:
            found = (cluster.get("md", "echo", NAMESPACE).get("status") or {}).get("versions") or []
            return found if any(version.get("state") == "Ready" for version in found) else None

        assert [(version["version"], version["state"]) for version in eventually(versions)] == [
            ("1", "Ready")
        ]
        held = cluster.get("secret", "echo-triton", NAMESPACE)
        assert base64.b64decode(held["data"][TRITON_KEY]).decode() == ADMIN_KEY
        assert held["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
