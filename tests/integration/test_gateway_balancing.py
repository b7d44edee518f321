"""Every Triton behind the gateway: two Tritons (PyTriton's server) serve one model, as two pods behind the
model's headless Service do in a cluster, and one Envoy balances over both, HTTP and gRPC alike (by least
outstanding requests: a Triton busy with a long request gets none of the short ones); one of them killed,
the gateway stops sending to it and nothing that it had not begun to serve fails (connection failures are
tried again on the other).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy
import pytest
import tritonclient.grpc as triton_grpc
import yaml

from tollway.api import ModelDeployment
from tollway.api.parse import parse
from tollway.translate.serving import plan_serving

from testbed.client import Reply, request
from testbed.dataplane import EnvoyPorts, GatewayProcesses
from testbed.gateway import PRIORITIES, echo_model, secret, tier
from testbed.kube import eventually
from testbed.triton import RunningTriton, infer_body, running

KEY = "tw-test-balanced-key"


@dataclass
class Balanced:
    gateway: GatewayProcesses
    tritons: list[RunningTriton]

    def infer(self, **parameters: Any) -> Reply:
        return request(
            f"http://127.0.0.1:{self.gateway.ports[0]}/v1/models/echo/infer",
            data=json.dumps(infer_body(**parameters)).encode(),
            headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"},
        )

    def served(self) -> list[int]:
        """Each Triton's successful inferences so far."""
        return [
            int(
                sum(
                    float(value)
                    for value in re.findall(r"^nv_inference_request_success\{.*\} (\S+)$", text, re.M)
                )
            )
            for text in (triton.metrics_text() for triton in self.tritons)
        ]


@pytest.fixture(scope="module")
def balanced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Balanced]:
    workdir = tmp_path_factory.mktemp("balanced")
    echo = plan_serving(parse(ModelDeployment, echo_model()), PRIORITIES, "unused")
    with running(workdir / "a", echo) as first, running(workdir / "b", echo) as second:
        addresses = [triton.upstream("echo").split("=", 1)[1] for triton in (first, second)]
        source = workdir / "manifests.yaml"
        source.write_text(
            yaml.safe_dump_all([echo_model(), tier("pro", 1, {}, ["echo"]), secret("carol", "pro", KEY)])
        )
        gateway = GatewayProcesses(
            workdir=workdir, replicas=[EnvoyPorts.free()], upstreams=[f"echo={','.join(addresses)}"]
        )
        gateway.write_config(source)
        try:
            gateway.start_redis()
            gateway.start_ratelimit()
            gateway.start_envoys()
            yield Balanced(gateway, [first, second])
        finally:
            gateway.stop()


def test_both_tritons_serve_http_and_grpc(balanced: Balanced) -> None:
    before = balanced.served()
    assert [balanced.infer().status for _ in range(20)] == [200] * 20
    after_http = balanced.served()
    assert all(now > then for now, then in zip(after_http, before, strict=True)), (before, after_http)
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{balanced.gateway.ports[0]}")
    data = triton_grpc.InferInput("INPUT", [1, 2], "FP32")
    data.set_data_from_numpy(numpy.ones((1, 2), dtype="float32"))
    for _ in range(20):  # one HTTP/2 connection from the client: Envoy still spreads its streams
        client.infer("echo", [data], headers={"authorization": f"Bearer {KEY}"})
    after_grpc = balanced.served()
    assert all(now > then for now, then in zip(after_grpc, after_http, strict=True)), (after_http, after_grpc)


def busy_tritons(balanced: Balanced) -> list[int]:
    """Each Triton's outstanding requests from the gateway, as Envoy counts them (its admin /clusters)."""
    text = request(f"http://127.0.0.1:{balanced.gateway.replicas[0].admin}/clusters").body.decode()
    return [
        int(re.search(rf"triton-http\|echo::{re.escape(triton.http)}::rq_active::(\d+)", text).group(1))  # type: ignore[union-attr]
        for triton in balanced.tritons
    ]


def test_a_triton_busy_with_a_long_request_gets_none_of_the_short_ones(balanced: Balanced) -> None:
    """Least outstanding requests: while one Triton works through a long request (the echo model sleeps
    3 s), every short request goes to the other one; taking turns would queue half of them behind it."""
    before = balanced.served()
    with ThreadPoolExecutor(1) as pool:
        long = pool.submit(balanced.infer, sleep_ms=3000)
        busy = eventually(lambda: busy_tritons(balanced) if sum(busy_tritons(balanced)) == 1 else None)
        short = [balanced.infer() for _ in range(10)]
        still_busy = busy_tritons(balanced)
        assert long.result().status == 200
    assert [reply.status for reply in short] == [200] * 10
    after = balanced.served()
    gained = [now - then for now, then in zip(after, before, strict=True)]
    assert gained == [1 if held else 10 for held in busy], f"busy: {busy}, served: {gained}"
    assert still_busy == busy, "the long request was over before the short ones were"


def test_a_killed_triton_gets_nothing_more_and_no_request_fails(balanced: Balanced) -> None:
    survivor, killed = balanced.tritons
    killed.process.kill()
    # Connection failures are tried again on the other Triton: not one request fails.
    assert [balanced.infer().status for _ in range(30)] == [200] * 30
    admin = f"http://127.0.0.1:{balanced.gateway.replicas[0].admin}/clusters"

    def marked_unhealthy() -> bool:
        text = request(admin).body.decode()
        killed_port = killed.http.rsplit(":", 1)[1]
        return bool(
            re.search(rf"triton-http\|echo::127\.0\.0\.1:{killed_port}::health_flags::\S*failed", text)
        )

    eventually(marked_unhealthy, timeout=30)  # its readiness check fails: out of the pool
    assert survivor.process.popen.poll() is None


def test_the_gateway_reads_the_upstream_addresses_it_was_given(balanced: Balanced) -> None:
    clusters = yaml.safe_load((balanced.gateway.replica_dir(0) / "envoy" / "cds.yaml").read_text())
    echo = next(item for item in clusters["resources"] if item["name"] == "triton-http|echo")
    endpoints = echo["load_assignment"]["endpoints"][0]["lb_endpoints"]
    policy = echo["load_balancing_policy"]["policies"][0]["typed_extension_config"]
    assert len(endpoints) == 2 and policy["typed_config"]["selection_method"] == "FULL_SCAN"
