"""The scaling simulator (hack/testbed/scaling.py, which bench/scaling.py's conclusions come from) checked
against the real loop, so that its conclusions transfer: the same trace played through the real
kube-controller-manager's HPA (the one Tollway renders for a model that sets only targets), prometheus-adapter
on Tollway's rules and a real Prometheus, with the operator's burst floor under the HPA, gives a replica
timeline close to the simulator's.

What is not real is the plant: kwok's pods run no Triton, and one Triton beside the control plane would not
add capacity as the HPA adds pods. So the simulator's own queueing model of the replicas serves the trace in
real time, taking each second the replica count the real loop set on the Deployment, and exports its state
under Triton's metric names for Prometheus to scrape, and per pod for the operator to read its queue (each
ready pod's page holds its share). The comparison is then of the control loop: the HPA algorithm, its
tolerance, windows and rate policies, the metrics' windows and lag, and the burst floor, against the
simulator's rendition of them. The test bed's HPA syncs every 5 s (a cluster's default is 15 s) and
Prometheus scrapes every second; the simulator is run with the same.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as kubernetes_client
from kubernetes import config as kubernetes_config

from testbed import dataplane
from testbed.adapter import external_metrics
from testbed.kube import Cluster, eventually, operator
from testbed.processes import free_port
from testbed.scaling import Cluster as Replicas
from testbed.scaling import model_p99, simulate, tollway_default

NAMESPACE = f"simulator-check-{os.getpid()}"
MODEL = "plant"
STARTUP = 20
"""Seconds from a replica's creation to its first request, in the plant and the simulator alike."""
SYNC, LAG = 5, 2
"""The test bed's HPA sync period; the metrics' age when it reads them (a 1 s scrape, read live)."""
MAX_REPLICAS = 6
TRACE = [20] * 30 + [150] * 90 + [20] * 150
"""Requests a second: quiet, a burst that needs about five replicas, quiet again."""


def model() -> dict[str, Any]:
    """A model that sets only its targets: the default policy."""
    return {
        "apiVersion": "tollway.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": MODEL, "namespace": NAMESPACE},
        "spec": {
            "model": {"repository": "s3://models/plant", "backend": "python", "maxBatchSize": 8},
            "versions": [{"version": "1"}],
            "triton": {"gpus": 0},
            "autoscaling": {
                "minReplicas": 1,
                "maxReplicas": MAX_REPLICAS,
                "targets": {"queueDepthPerReplica": 4, "p99LatencyMs": 800},
            },
        },
    }


@dataclass
class Plant:
    """The simulator's replicas, played a second at a time: the replica count is the Deployment's, as the
    real loop set it; the arrivals are the trace's (a steady warm-up's before it starts)."""

    apps: Any
    replicas: Replicas = field(default_factory=lambda: Replicas(startup=STARTUP))
    counters: dict[str, float] = field(
        default_factory=lambda: {"success": 0.0, "executions": 0.0, "compute_us": 0.0}
    )
    timeline: list[int] = field(default_factory=list)
    """The replicas (starting ones too) each second of the trace."""
    started: threading.Event = field(default_factory=threading.Event)
    stopping: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        second = 0
        next_at = time.monotonic()
        trace_from = None
        while not self.stopping.is_set():
            if trace_from is None and self.started.is_set():
                trace_from = second
            index = None if trace_from is None else second - trace_from
            if index is not None and index >= len(TRACE):
                return
            arrived = TRACE[0] if index is None else TRACE[index]
            wanted = self.apps.read_namespaced_deployment_scale(f"{MODEL}-triton", NAMESPACE).spec.replicas
            with self.lock:
                if wanted != self.replicas.replicas:
                    self.replicas.resize(float(second), wanted)
                self.replicas.step(float(second), arrived)
                served = self.replicas.history[-1]
                self.counters["success"] += served["served"]
                self.counters["executions"] += served["batches"]
                self.counters["compute_us"] += served["served"] * served["batch_seconds"] * 1e6
                if index is not None:
                    self.timeline.append(self.replicas.replicas)
            second += 1
            next_at += 1.0
            self.stopping.wait(max(0.0, next_at - time.monotonic()))

    def metrics(self, share: bool = False) -> str:
        """The plant's state in Triton's metric names (Prometheus's text format); `share`: one pod's page,
        with its share of the queue (the operator reads every ready pod's and adds them up)."""
        labels = f'model="{MODEL}",version="1"'
        with self.lock:
            history = self.replicas.history
            waiting = history[-1]["queue"] if history else 0.0
            if share:
                waiting /= max(self.replicas.replicas, 1)
            p99_us = model_p99(self.replicas, len(history) - 1) * 1000 if history else 0.0
            wait_us = history[-1]["wait_ms"] * 1000 if history else 0.0
            counters = dict(self.counters)
        lines = [
            f"nv_inference_request_success{{{labels}}} {counters['success']}",
            f"nv_inference_exec_count{{{labels}}} {counters['executions']}",
            f"nv_inference_compute_infer_duration_us{{{labels}}} {counters['compute_us']}",
            f"nv_inference_pending_request_count{{{labels}}} {waiting}",
            f'nv_inference_request_summary_us{{{labels},quantile="0.99"}} {p99_us}',
            f'nv_inference_queue_summary_us{{{labels},quantile="0.99"}} {wait_us}',
        ]
        return "\n".join(lines) + "\n"


def serve_metrics(plant: Plant, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = plant.metrics(share=self.path.startswith("/pods/")).encode()
            self.send_response(200)
            self.send_header("content-type", "text/plain; version=0.0.4")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:  # Prometheus scrapes every second: not worth a line each
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def played(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    """The trace played through the real loop: the replica timeline the real HPA and burst floor made."""
    workdir = tmp_path_factory.mktemp("simulator-check")
    apps = kubernetes_client.AppsV1Api(kubernetes_config.new_client_from_config(str(cluster.kubeconfig)))
    plant = Plant(apps)
    metrics_port, prometheus_port = free_port(), free_port()
    server = serve_metrics(plant, metrics_port)
    target = dataplane.ScrapeTarget("plant", f"127.0.0.1:{metrics_port}", {"namespace": NAMESPACE})
    prometheus = dataplane.prometheus(workdir, prometheus_port, [target], [])
    url = f"http://127.0.0.1:{prometheus_port}"
    stepping = threading.Thread(target=plant.run, daemon=True)
    try:
        with (
            external_metrics(cluster, workdir, url),
            operator(
                cluster,
                NAMESPACE,
                workdir,
                *("--triton-address", "127.0.0.1:9", "--prometheus-url", url),
                *("--triton-metrics-url", f"http://127.0.0.1:{metrics_port}/pods/{{pod}}/metrics"),
            ),
        ):
            cluster.apply(model())
            deployment = f"{MODEL}-triton"
            eventually(
                lambda: (
                    deployment
                    in {item["metadata"]["name"] for item in cluster.items("deployments", NAMESPACE)}
                )
            )
            stepping.start()

            def reading() -> bool | None:
                hpa = cluster.get("hpa", deployment, NAMESPACE)
                current = (hpa.get("status") or {}).get("currentMetrics") or []
                return (len(current) == 3 and (hpa["status"].get("desiredReplicas") == 1)) or None

            eventually(reading, timeout=180)  # the three signals read, the warm-up needing one replica
            time.sleep(45)  # the busy time's window full of the warm-up
            plant.started.set()
            stepping.join(timeout=len(TRACE) + 120)
            assert not stepping.is_alive(), "the plant did not finish the trace"
            yield plant.timeline
    finally:
        plant.stopping.set()
        server.shutdown()
        prometheus.stop()
        cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false")


def first_above(timeline: list[int], count: int) -> int:
    return next(second for second, replicas in enumerate(timeline) if replicas > count)


def halved(timeline: list[int]) -> int:
    """The second the replicas first fall to half their peak, after it."""
    peak = max(timeline)
    since = timeline.index(peak)
    return next(second for second in range(since, len(timeline)) if timeline[second] <= peak // 2)


def test_the_real_loop_follows_the_simulators_replica_timeline(played: list[int]) -> None:
    default = tollway_default(lag=LAG, max_replicas=MAX_REPLICAS, sync=SYNC)
    simulated = simulate("simulated", TRACE, default, 1, STARTUP).replicas
    real = played
    print(f"\nreplicas each 10 s, real:      {real[::10]}\nreplicas each 10 s, simulated: {simulated[::10]}")
    real_seconds, simulated_seconds = sum(real), sum(simulated)
    print(f"replica-seconds: real {real_seconds}, simulated {simulated_seconds}")
    print(f"first new replica: real at {first_above(real, 1)} s, simulated at {first_above(simulated, 1)} s")
    figures = os.environ.get("TOLLWAY_FIGURES")
    if figures:
        plot(Path(figures) / "scaling-real-loop.png", real, simulated)
    assert len(real) == len(TRACE)
    # The burst is met alike: the same peak, reached within two syncs of the simulator's.
    assert abs(max(real) - max(simulated)) <= 1
    assert abs(first_above(real, 1) - first_above(simulated, 1)) <= 2 * SYNC + LAG
    # Down alike to half the peak (the simulator then keeps its last replicas a little longer than the
    # controller: its rate limit on scale-down is the stricter reading), and what it costs, within a fifth.
    assert abs(halved(real) - halved(simulated)) <= 30
    assert abs(real_seconds - simulated_seconds) <= 0.2 * simulated_seconds


def plot(path: Path, real: list[int], simulated: list[int]) -> None:
    """The two timelines and the trace, for the README."""
    import matplotlib  # noqa: PLC0415 (only when asked for the figure)

    matplotlib.use("Agg")
    from matplotlib import pyplot  # noqa: PLC0415

    figure, (load, replicas) = pyplot.subplots(2, 1, figsize=(9, 5), sharex=True)
    load.plot(range(len(TRACE)), TRACE, color="0.4")
    load.set_ylabel("requests / s")
    load.set_title("the real loop (HPA and burst floor) against the simulator")
    replicas.step(range(len(real)), real, where="post", label="real loop (kube-controller-manager, operator)")
    replicas.step(range(len(simulated)), simulated, where="post", linestyle="--", label="simulator")
    replicas.set_ylabel("replicas")
    replicas.set_xlabel("second")
    replicas.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    pyplot.close(figure)
