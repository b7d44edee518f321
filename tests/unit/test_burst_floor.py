"""The burst floor's rule (`translate.floor`), the HPA and ScaledObject it renders into, and how a pod's
queue is read off Triton's metrics page (tests/integration/test_triton.py reads a real one). Its loop runs
against fakes in test_reconcile.py and for real in tests/integration/test_burst_floor_live.py and
test_scaling_simulator.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tollway.api import ModelDeployment
from tollway.api.parse import parse
from tollway.observe.serving import METRICS_PAGE_BYTES, QUEUE_TIMEOUT_SECONDS, pending, queue_depth
from tollway.translate import Context, translate
from tollway.translate.floor import HOLD_SECONDS, Floor, raised
from tollway.translate.serving import scaling

from builders import model_deployment

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
AUTOSCALING = {"minReplicas": 1, "maxReplicas": 8, "targets": {"queueDepthPerReplica": 4}}


def plan(**autoscaling: Any) -> Any:
    body = model_deployment("chat", **{"spec.autoscaling": {**AUTOSCALING, **autoscaling}})
    return scaling(parse(ModelDeployment, body), prometheus_url="")


@pytest.mark.parametrize(
    ("waiting", "replicas", "floor"),
    [
        (8, 1, 2),  # one replica a queue target's worth: twice the one there is
        (30, 1, 8),
        (300, 2, 8),  # never past maxReplicas
        (20, 3, None),  # asks for 5: less than twice its 3
        (0, 1, None),
        (30, 0, None),  # at zero the gateway's signal wakes the model, not the floor
    ],
)
def test_a_burst_is_an_ask_of_twice_the_replicas_there_are(
    waiting: int, replicas: int, floor: int | None
) -> None:
    found = raised(waiting, replicas, plan(), now=100.0)
    expected = None if floor is None else Floor(floor, 100.0 + HOLD_SECONDS)
    assert found == expected


def test_no_queue_target_no_floor() -> None:
    model = plan(targets={"p99LatencyMs": 500})
    assert model is not None and raised(1000, 1, model, now=0.0) is None


@pytest.mark.parametrize("engine", ["hpa", "keda"])
def test_a_held_floor_is_the_autoscalers_minimum(engine: str) -> None:
    body = model_deployment("chat", **{"spec.autoscaling": {**AUTOSCALING, "engine": engine}})
    kind = "HorizontalPodAutoscaler" if engine == "hpa" else "ScaledObject"
    field = "minReplicas" if engine == "hpa" else "minReplicaCount"

    def minimum(floor: int) -> int:
        manifests = translate(ModelDeployment, body, NOW, Context(floor=floor)).manifests
        return int(next(item for item in manifests if item["kind"] == kind)["spec"][field])

    assert (minimum(0), minimum(5), minimum(50)) == (1, 5, 8)  # never past maxReplicas


def test_a_pods_queue_is_its_models_pending_requests_over_its_versions() -> None:
    page = "\n".join(
        [
            "# HELP nv_inference_pending_request_count Instantaneous number of pending requests",
            "# TYPE nv_inference_pending_request_count gauge",
            'nv_inference_pending_request_count{model="chat",version="1"} 3',
            'nv_inference_pending_request_count{model="chat",version="2"} 4',
            'nv_inference_pending_request_count{model="chat-large",version="1"} 50',
            'nv_inference_request_success{model="chat",version="1"} 900',
        ]
    )
    assert pending(page, "chat") == 7.0
    assert pending(page, "embed") == 0.0
    for wrong in ("x", "NaN", "+Inf", "-1", ""):
        line = f'nv_inference_pending_request_count{{model="chat",version="3"}} {wrong}'
        assert pending(f"{page}\n{line}", "chat") is None, wrong


# Pages a pod could serve that Triton never would: a fake server, since Triton cannot be made to.


class Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/elsewhere":
            self.send_response(302)
            self.send_header("location", "http://127.0.0.1:1/metrics")
            self.end_headers()
            return
        self.send_response(200)
        self.end_headers()
        line = b'nv_inference_pending_request_count{model="chat",version="1"} 3\n'
        if self.path == "/slow":  # a byte at a time, each within the socket's timeout, never the whole page's
            for byte in line * 20:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.05)
        elif self.path == "/large":
            self.wfile.write(b"#" * (METRICS_PAGE_BYTES + 1) + b"\n" + line)
        else:
            self.wfile.write(line)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture(scope="module")
def pages() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_page_is_read_where_it_is_whole_and_soon_or_not_at_all(pages: str) -> None:
    assert queue_depth(f"{pages}/metrics", "chat") == 3.0
    assert queue_depth(f"{pages}/elsewhere", "chat") is None  # never followed
    assert queue_depth(f"{pages}/large", "chat") is None
    started = time.monotonic()
    assert queue_depth(f"{pages}/slow", "chat") is None  # 1,300 bytes at 50 ms each: over a minute
    assert time.monotonic() - started < 3 * QUEUE_TIMEOUT_SECONDS
