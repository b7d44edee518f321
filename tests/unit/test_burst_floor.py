"""The burst floor's rule (`translate.floor`), the HPA and ScaledObject it renders into, and how a pod's
queue is read off Triton's metrics page. Its loop runs against fakes in test_reconcile.py and for real in
tests/integration/test_scaling_simulator.py."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from tollway.api import ModelDeployment
from tollway.api.parse import parse
from tollway.observe.serving import pending
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
    assert pending(page + '\nnv_inference_pending_request_count{model="chat",version="3"} x', "chat") is None
