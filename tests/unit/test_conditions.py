"""Settling the status against the object: stable timestamps, and no write when nothing changed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tollway.api import ModelDeployment
from tollway.translate import translate
from tollway.translate.conditions import apply_failed, changed_conditions, settle

from builders import model_deployment

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def test_first_status_is_written_whole() -> None:
    desired = translate(ModelDeployment, model_deployment(), T0).status
    assert settle({}, desired) == desired


def test_same_status_later_is_no_write() -> None:
    first = settle({}, translate(ModelDeployment, model_deployment(), T0).status)
    assert first is not None
    later = translate(ModelDeployment, model_deployment(), T0 + timedelta(hours=1)).status
    assert settle(first, later) is None


def test_a_condition_keeps_its_transition_time_while_its_status_holds() -> None:
    first = settle({}, translate(ModelDeployment, model_deployment(), T0).status)
    assert first is not None
    newer = model_deployment(**{"metadata.generation": 2})
    second = settle(first, translate(ModelDeployment, newer, T0 + timedelta(hours=1)).status)
    assert second is not None and second["observedGeneration"] == 2
    ready = next(item for item in second["conditions"] if item["type"] == "Ready")
    assert ready["lastTransitionTime"] == "2026-11-26T12:00:00Z"
    assert ready["observedGeneration"] == 2


def test_a_status_change_moves_the_transition_time_and_is_reported() -> None:
    first = settle({}, translate(ModelDeployment, model_deployment(), T0).status)
    assert first is not None
    broken = model_deployment(**{"spec.aliases": {"latest": "9"}, "metadata.generation": 2})
    second = settle(first, translate(ModelDeployment, broken, T0 + timedelta(minutes=5)).status)
    assert second is not None
    degraded = next(item for item in second["conditions"] if item["type"] == "Degraded")
    assert (degraded["status"], degraded["lastTransitionTime"]) == ("True", "2026-11-26T12:05:00Z")
    changed = {(item.type, item.status, item.reason) for item in changed_conditions(first, second)}
    assert changed == {
        ("Ready", "False", "InvalidSpec"),
        ("Progressing", "False", "InvalidSpec"),
        ("Degraded", "True", "InvalidSpec"),
    }


def test_an_invalid_resource_yields_no_manifests_and_names_the_field() -> None:
    result = translate(ModelDeployment, model_deployment(**{"spec.aliases": {"latest": "9"}}), T0)
    assert result.manifests == ()
    assert result.problems == ("spec.aliases: every alias must name a version listed in spec.versions",)


def test_a_refused_child_turns_ready_false_and_degraded_true() -> None:
    status = translate(ModelDeployment, model_deployment(), T0).status
    failed = apply_failed(status, "Deployment/chat-triton: spec.template: Invalid value", T0)
    found = {item["type"]: (item["status"], item["reason"]) for item in failed["conditions"]}
    assert found == {
        "Ready": ("False", "ApplyFailed"),
        "Progressing": ("True", "Creating"),
        "Degraded": ("True", "ApplyFailed"),
    }
