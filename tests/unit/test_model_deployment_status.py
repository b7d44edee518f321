"""ModelDeployment status from observations: what each kind of trouble looks like to a platform engineer."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tollway.api import ModelDeployment
from tollway.ir.state import PodProblem, ServingState, TritonState, VersionState
from tollway.translate import Context, translate

from builders import available_deployment, model_deployment

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
AVAILABLE = available_deployment()
READY = TritonState(reachable=True, versions=(VersionState("2", "READY"), VersionState("1", "READY")))


def status(serving: ServingState, **changes: Any) -> dict[str, Any]:
    return translate(ModelDeployment, model_deployment(**changes), NOW, Context(serving=serving)).status


def conditions(found: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    return {item["type"]: (item["status"], item["reason"], item["message"]) for item in found["conditions"]}


def test_serving_when_available_and_every_version_is_ready() -> None:
    found = status(ServingState(deployment=AVAILABLE, triton=READY))
    assert conditions(found)["Ready"][:2] == ("True", "Serving")
    assert conditions(found)["Progressing"][:2] == ("False", "Stable")
    assert conditions(found)["Degraded"][:2] == ("False", "AsExpected")
    assert (found["replicas"], found["readyReplicas"]) == (2, 2)
    assert [(item["version"], item["state"]) for item in found["versions"]] == [
        ("2", "Ready"),
        ("1", "Ready"),
    ]


def test_before_the_first_apply_it_is_creating() -> None:
    found = conditions(status(ServingState()))
    assert found["Ready"][:2] == ("False", "Creating") and found["Progressing"][:2] == ("True", "Creating")


def test_a_rollout_in_progress() -> None:
    rolling = available_deployment(generation=2, observed_generation=2, updated_replicas=1)
    found = conditions(status(ServingState(deployment=rolling, triton=READY)))
    assert found["Progressing"] == ("True", "RollingOut", "1/2 replicas updated, 2 available")


def test_a_model_idle_at_zero_is_ready_to_wake_and_one_that_may_not_sleep_is_not() -> None:
    at_zero = available_deployment(replicas=0, ready_replicas=0, available_replicas=0, updated_replicas=0)
    unreachable = TritonState(reachable=False, error="no pod")
    sleeps = {"spec.autoscaling": {"minReplicas": 0, "maxReplicas": 2}}
    found = conditions(status(ServingState(deployment=at_zero, triton=unreachable), **sleeps))
    assert found["Ready"][:2] == ("True", "ScaledToZero")
    assert found["Degraded"][:2] == ("False", "AsExpected")
    assert conditions(status(ServingState(deployment=at_zero, triton=unreachable)))["Ready"] == (
        "False",
        "DeploymentUnavailable",
        "0/0 Triton replicas available",
    )


def test_unreachable_triton_is_said_not_raised() -> None:
    down = TritonState(reachable=False, error="chat-triton.ai.svc:8000: connection refused")
    found = status(ServingState(deployment=AVAILABLE, triton=down))
    assert conditions(found)["Ready"][:2] == ("False", "TritonUnreachable")
    assert "connection refused" in conditions(found)["Ready"][2]
    assert {item["state"] for item in found["versions"]} == {"Unknown"}


def test_a_stuck_image_pull_degrades_with_the_pod_named() -> None:
    problem = PodProblem("ImagePullBackOff", "pod chat-triton-abc, container triton: Back-off pulling image")
    found = conditions(status(ServingState(deployment=AVAILABLE, pod_problems=(problem,), triton=READY)))
    assert found["Degraded"] == ("True", "ImagePullBackOff", problem.message)


def test_no_gpu_node_degrades_as_unschedulable() -> None:
    problem = PodProblem(
        "Unschedulable", "pod chat-triton-abc: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    )
    found = conditions(status(ServingState(deployment=AVAILABLE, pod_problems=(problem,))))
    assert found["Degraded"][:2] == ("True", "Unschedulable") and "nvidia.com/gpu" in found["Degraded"][2]


def test_a_failed_version_degrades_with_tritons_message() -> None:
    versions = (VersionState("2", "UNAVAILABLE", "model.py: boom"), VersionState("1", "READY"))
    failed = TritonState(reachable=True, versions=versions)
    found = status(ServingState(deployment=AVAILABLE, triton=failed))
    assert conditions(found)["Degraded"] == ("True", "VersionFailed", "version 2: model.py: boom")
    assert conditions(found)["Ready"][:2] == ("False", "VersionsNotReady")


def test_a_version_past_its_sunset_is_reported_as_such() -> None:
    versions = [
        {"version": "2"},
        {"version": "1", "deprecation": {"announced": "2026-01-01", "sunset": "2026-06-30"}},
    ]
    found = status(ServingState(deployment=AVAILABLE, triton=READY), **{"spec.versions": versions})
    assert [(item["version"], item["state"]) for item in found["versions"]] == [
        ("2", "Ready"),
        ("1", "Sunset"),
    ]
    assert conditions(found)["Ready"][:2] == ("True", "Serving")
