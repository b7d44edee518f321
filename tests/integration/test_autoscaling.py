"""The autoscaling loop and live metrics with real components: Triton's metrics scraped by a real
Prometheus that evaluates the rules Tollway renders; prometheus-adapter (built from the Go module proxy)
registered as the external metrics API of the real kube-apiserver; the HPA Tollway renders, run by the
real kube-controller-manager. The pods it scales are scheduled onto the control plane's simulated nodes and
reported Ready there by kwok, but no Triton runs in them: the one Triton runs beside the control plane, and
the load reaches it as users' does: through Tollway's gateway (Envoy, its ratelimit service and Redis), with
an API key, over tritonclient.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy
import pytest
import tritonclient.http as triton_http
import yaml

from tollway.api import ModelDeployment
from tollway.api.parse import parse
from tollway.render.monitoring import rule_groups
from tollway.translate.serving import plan_serving

from testbed import dataplane
from testbed.adapter import external_metrics
from testbed.dataplane import EnvoyPorts, GatewayProcesses
from testbed.gateway import secret, tier
from testbed.kube import Cluster, eventually, operator
from testbed.nodes import NODE_PREFIX
from testbed.triton import RunningTriton, running

NAMESPACE = f"scaling-test-{os.getpid()}"
QUEUE_TARGET = 2
KEY = "tw-test-scaling-key"


def model() -> dict[str, Any]:
    return {
        "apiVersion": "tollway.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "echo", "namespace": NAMESPACE},
        "spec": {
            "model": {"repository": "s3://models/echo", "backend": "python", "maxBatchSize": 1},
            "versions": [{"version": "1"}],
            "triton": {"gpus": 0},
            "batching": {"maxQueueDelayMicroseconds": 0},
            "queue": {"maxQueueSize": 128},
            "autoscaling": {
                "engine": "hpa",
                "minReplicas": 1,
                "maxReplicas": 4,
                # The queue drives this test; the P99 target sits far above anything the echo model does.
                "targets": {"queueDepthPerReplica": QUEUE_TARGET, "p99LatencyMs": 600000},
                "scaleUp": {"stabilizationSeconds": 0},
                "scaleDown": {"stabilizationSeconds": 0},
            },
            "slo": {"availability": "99.9", "p99LatencyMs": 1000},
        },
    }


class Stoppable(Protocol):
    def stop(self) -> None: ...


@dataclass
class Stack:
    triton: RunningTriton
    gateway: str
    """Where clients send: the gateway's address (HOST:PORT)."""
    prometheus: str
    processes: dict[str, Stoppable]


def gateway(workdir: Path, triton: RunningTriton) -> GatewayProcesses:
    """Tollway's gateway in front of `triton`, for one tier without limits whose key is KEY."""
    documents = [model(), tier("load", 1, {}, ["echo"]), secret("load", "load", KEY)]
    for document in documents:
        document["metadata"]["namespace"] = NAMESPACE
    source = workdir / "gateway.yaml"
    source.write_text(yaml.safe_dump_all(documents))
    processes = GatewayProcesses(
        workdir=workdir, replicas=[EnvoyPorts.free()], upstreams=[triton.upstream("echo")]
    )
    processes.write_config(source)
    processes.start_redis()
    processes.start_ratelimit()
    processes.start_envoys()
    return processes


@pytest.fixture(scope="module")
def stack(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("scaling")
    resource = parse(ModelDeployment, model())
    rendered = plan_serving(resource, (), "unused")
    rules = workdir / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": rule_groups(rendered)}))
    with running(workdir / "triton", rendered) as triton:
        processes: dict[str, Stoppable] = {}
        try:
            processes["gateway"] = gateway(workdir, triton)
            address = f"127.0.0.1:{processes['gateway'].ports[0]}"
            prometheus_port = dataplane.free_port()
            target = dataplane.ScrapeTarget("triton", triton.metrics, {"namespace": NAMESPACE})
            processes["prometheus"] = dataplane.prometheus(workdir, prometheus_port, [target], [rules])
            url = f"http://127.0.0.1:{prometheus_port}"
            with external_metrics(cluster, workdir, url):
                # A trickle of traffic all along (Triton's latency summaries go blank without any),
                # started once Prometheus scrapes Triton, so that it sees every request counted.
                eventually(lambda: dataplane.prometheus_query(url, 'up{job="triton"} == 1'))
                processes["trickle"] = Trickle(address)
                with operator(
                    cluster, NAMESPACE, workdir, "--triton-address", triton.http, "--prometheus-url", url
                ):
                    cluster.apply(model())
                    yield Stack(triton=triton, gateway=address, prometheus=url, processes=processes)
        finally:
            for process in reversed(processes.values()):
                process.stop()


def query(stack: Stack, expression: str) -> list[dict[str, Any]]:
    return dataplane.prometheus_query(stack.prometheus, expression)


def infer(client: triton_http.InferenceServerClient, sleep_ms: int = 0) -> None:
    """One request through the gateway, taking `sleep_ms` in the model; AssertionError unless answered."""
    data = triton_http.InferInput("INPUT", [1, 4], "FP32")
    data.set_data_from_numpy(numpy.ones((1, 4), dtype="float32"))
    parameters = {"sleep_ms": sleep_ms} if sleep_ms else None
    client.infer("echo", [data], parameters=parameters, headers={"authorization": f"Bearer {KEY}"})


class Trickle:
    """Five requests a second through the gateway at `address`, on a thread, until stopped."""

    def __init__(self, address: str) -> None:
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(address,), daemon=True)
        self.thread.start()

    def _run(self, address: str) -> None:
        client = triton_http.InferenceServerClient(address)
        while not self.stopping.wait(0.2):
            infer(client)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()


def send(stack: Stack, count: int, sleep_ms: int = 0, stop: threading.Event | None = None) -> None:
    """`count` requests (or until `stop` is set) on one connection, each taking `sleep_ms` in the model."""
    client = triton_http.InferenceServerClient(stack.gateway)
    sent = 0
    while sent < count and not (stop and stop.is_set()):
        infer(client, sleep_ms)
        sent += 1
    client.close()


def test_the_recording_rules_turn_tritons_metrics_into_tollways(stack: Stack, cluster: Cluster) -> None:
    selector = f'namespace="{NAMESPACE}",model="echo"'
    for record in ("tollway:request_latency_ms:p99", "tollway:requests:rate1m", "tollway:queue_depth"):
        found = eventually(lambda record=record: query(stack, f"{record}{{{selector}}} >= 0"), timeout=60)
        assert found[0]["metric"]["model"] == "echo"  # a number (NaN, before the first request, is not)
    rate = eventually(lambda: query(stack, f"tollway:requests:rate1m{{{selector}}} > 1"))  # about 5/s
    assert 1 < float(rate[0]["value"][1]) < 10
    ratio = eventually(lambda: query(stack, f"tollway:error_ratio:rate5m{{{selector}}}"))
    assert float(ratio[0]["value"][1]) == 0.0


def test_the_operator_writes_live_figures_into_status(stack: Stack, cluster: Cluster) -> None:
    def figures() -> dict[str, Any] | None:
        metrics = (cluster.get("md", "echo", NAMESPACE).get("status") or {}).get("metrics") or {}
        return metrics if "p99Ms" in metrics and "queueDepth" in metrics else None

    metrics = eventually(figures, timeout=90)
    assert metrics["p99Ms"] > 0 and metrics["queueDepth"] == 0 and metrics["observedAt"].endswith("Z")
    printed = cluster.kubectl("get", "md", "echo", "-n", NAMESPACE).stdout
    assert f"{metrics['p99Ms']}".split(".")[0] in printed.splitlines()[1]


def hpa(cluster: Cluster) -> dict[str, Any]:
    return cluster.get("hpa", "echo-triton", NAMESPACE)


def test_the_hpa_scales_up_on_the_queue_and_down_after(stack: Stack, cluster: Cluster) -> None:
    def reading() -> list[dict[str, Any]] | None:
        current = (hpa(cluster).get("status") or {}).get("currentMetrics") or []
        return current if len(current) == 3 else None

    eventually(reading, timeout=120)  # the three external metrics served through the adapter
    assert hpa(cluster)["status"]["desiredReplicas"] == 1
    stop = threading.Event()
    workers = [threading.Thread(target=send, args=(stack, 10**9, 300, stop)) for _ in range(12)]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    try:
        scaled = eventually(
            lambda: (hpa(cluster)["status"].get("desiredReplicas") or 0) >= 2 or None, timeout=120
        )
        took = time.monotonic() - started
        assert scaled
        print(f"\nHPA: load start → first scale-up decision in {took:.1f}s")
        # 11 requests waiting over a target of 2 per replica: the most it may have, 4 (in one step).
        eventually(lambda: replicas(cluster) == 4 or None, timeout=90)
        # The replicas it added run: their pods are scheduled onto the simulated nodes and Ready there.
        running = eventually(lambda: len(ready_pods(cluster)) == 4 and ready_pods(cluster), timeout=90)
        assert all(pod["spec"]["nodeName"].startswith(NODE_PREFIX) for pod in running)
        assert int(cluster.get("deployment", "echo-triton", NAMESPACE)["status"]["readyReplicas"]) == 4
        time.sleep(10)
        assert replicas(cluster) == 4  # held while the queue stays
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    eventually(lambda: replicas(cluster) < 4 or None, timeout=120)  # and down once the queue is gone


def replicas(cluster: Cluster) -> int:
    return int(cluster.get("deployment", "echo-triton", NAMESPACE)["spec"]["replicas"])


def ready_pods(cluster: Cluster) -> list[dict[str, Any]]:
    """The model's pods that are scheduled and Ready (and not on their way out)."""
    found = []
    for pod in cluster.items("pods", NAMESPACE):
        conditions = {item["type"]: item["status"] for item in pod["status"].get("conditions", [])}
        ours = pod["metadata"]["labels"].get("tollway.dev/model") == "echo"
        live = not pod["metadata"].get("deletionTimestamp")
        if ours and live and conditions.get("PodScheduled") == "True" and conditions.get("Ready") == "True":
            found.append(pod)
    return found


def test_prometheus_away_keeps_the_last_figures_and_says_why(stack: Stack, cluster: Cluster) -> None:
    before = cluster.get("md", "echo", NAMESPACE)["status"]["metrics"]
    stack.processes["prometheus"].stop()

    def unavailable() -> dict[str, Any] | None:
        status = cluster.get("md", "echo", NAMESPACE)["status"]
        found = {item["type"]: item for item in status["conditions"]}
        condition = found.get("MetricsAvailable", {})
        return status if condition.get("status") == "False" else None

    status = eventually(unavailable, timeout=60)
    condition = next(item for item in status["conditions"] if item["type"] == "MetricsAvailable")
    assert condition["reason"] == "PrometheusUnreachable" and "Prometheus" in condition["message"]
    assert status["metrics"]["observedAt"] >= before["observedAt"]
    time.sleep(3)
    assert cluster.get("md", "echo", NAMESPACE)["status"]["metrics"] == status["metrics"]  # stale, not erased
