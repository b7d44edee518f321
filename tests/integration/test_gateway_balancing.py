"""Every Triton behind the gateway: two Tritons (PyTriton's server) serve one model, as two pods behind the
model's headless Service do in a cluster, and one Envoy balances over both, HTTP and gRPC alike (by least
outstanding requests); one of them killed, the gateway stops sending to it and nothing that it had not
begun to serve fails (connection failures are tried again on the other).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

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

    def infer(self) -> Reply:
        return request(
            f"http://127.0.0.1:{self.gateway.ports[0]}/v1/models/echo/infer",
            data=json.dumps(infer_body()).encode(),
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
    assert len(endpoints) == 2 and echo["lb_policy"] == "LEAST_REQUEST"
