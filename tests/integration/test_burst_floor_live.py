"""The burst floor on the real control plane: `tollway run` reads a model's queue from its pods' metrics
pages, sets the Deployment's count within seconds of a burst, holds it as the HPA's minimum for 30 s, then
lets the minimum go and leaves the count to the HPA.

The HPA here has no metrics to read (no prometheus-adapter is registered), so the count changes only through
the floor: its minimum, which the HPA applies at once, and its own write of the Deployment's scale (with the
adapter, test_scaling_simulator.py plays a trace through both). The pages are a small server's, in Triton's
metric names: kwok's pods run no Triton, and a real Triton's queue cannot be held at a chosen depth.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tollway.translate.floor import HOLD_SECONDS

from builders import model_deployment
from testbed.kube import Cluster, eventually, operator
from testbed.processes import free_port

NAMESPACE = f"burst-floor-{os.getpid()}"
MODEL = "surge"
DEPLOYMENT = f"{MODEL}-triton"
MOST = 5
WAITING = 40
"""Requests waiting on each pod's page during the burst: on one replica, an ask of ten, so the most (5)."""


class Pages:
    """Each pod's metrics page: `waiting` requests in its queue."""

    def __init__(self) -> None:
        self.waiting = 0
        self.read = threading.Event()
        """Set by a read of a pod's page: the operator has the pod in view."""

    def serve(self, port: int) -> ThreadingHTTPServer:
        pages = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = f'nv_inference_pending_request_count{{model="{MODEL}",version="1"}} {pages.waiting}\n'
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())
                pages.read.set()

            def log_message(self, *_: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


def model() -> dict[str, Any]:
    autoscaling = {"minReplicas": 1, "maxReplicas": MOST, "targets": {"queueDepthPerReplica": 4}}
    changes = {"metadata.namespace": NAMESPACE, "spec.triton.gpus": 0, "spec.autoscaling": autoscaling}
    return model_deployment(MODEL, **changes)


def replicas(cluster: Cluster) -> int:
    return int(cluster.get("deployment", DEPLOYMENT, NAMESPACE)["spec"]["replicas"])


def ready(cluster: Cluster) -> int:
    """The Deployment's ready replicas; 0 before the operator has made it."""
    found = [
        item for item in cluster.items("deployments", NAMESPACE) if item["metadata"]["name"] == DEPLOYMENT
    ]
    return int(((found[0].get("status") or {}).get("readyReplicas") or 0) if found else 0)


def bursts(cluster: Cluster) -> list[str]:
    """The notes of the model's BurstScaledUp events."""
    events = cluster.items("events", NAMESPACE)
    return [
        str(item.get("note") or item.get("message"))
        for item in events
        if item.get("reason") == "BurstScaledUp"
    ]


def hpa_minimum(cluster: Cluster) -> int:
    return int(cluster.get("hpa", DEPLOYMENT, NAMESPACE)["spec"]["minReplicas"])


@pytest.fixture(scope="module")
def bed(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Pages]]:
    """The model at rest on one ready (kwok) pod, its page read by the operator: no request waiting."""
    pages, port = Pages(), free_port()
    server = pages.serve(port)
    workdir: Path = tmp_path_factory.mktemp("burst-floor")
    url = f"http://127.0.0.1:{port}/pods/{{pod}}/metrics"
    try:
        with operator(
            cluster, NAMESPACE, workdir, "--triton-address", "127.0.0.1:9", "--triton-metrics-url", url
        ):
            cluster.apply(model())
            eventually(lambda: ready(cluster) == 1 or None, timeout=120)
            assert pages.read.wait(timeout=30), "the operator never read the pod's page"
            yield cluster, pages
    finally:
        server.shutdown()
        # Gone before the next module: a cluster-wide operator there (the chart's) would find it terminating.
        cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=true", "--timeout=120s")


def test_a_burst_sets_the_count_at_once_holds_it_as_the_hpas_minimum_and_then_lets_the_minimum_go(
    bed: tuple[Cluster, Pages],
) -> None:
    cluster, pages = bed
    assert (replicas(cluster), hpa_minimum(cluster)) == (1, 1)
    pages.waiting = WAITING
    started = time.monotonic()
    eventually(lambda: replicas(cluster) == MOST or None, timeout=30)
    raised_after = time.monotonic() - started
    print(f"\nthe floor set {MOST} replicas {raised_after:.1f} s after the burst")
    assert raised_after < 10  # a pass every 2 s, a read and a write; generous for a loaded machine
    assert hpa_minimum(cluster) == MOST
    eventually(lambda: bursts(cluster) or None, timeout=10)  # recorded once the count is set
    pages.waiting = 0
    eventually(lambda: hpa_minimum(cluster) == 1 or None, timeout=HOLD_SECONDS + 30)
    held = time.monotonic() - started
    assert held >= HOLD_SECONDS - 1
    # The floor never lowers a count: going down is the HPA's, which has no figures here.
    assert replicas(cluster) == MOST
    assert bursts(cluster) == [  # once: the count raised, the floor held, no second burst
        f"a burst: {WAITING} requests waiting with the Deployment at 1; scaled to {MOST} at once, held as the"
        f" autoscaler's minimum for {HOLD_SECONDS:.0f} s"
    ]
