"""Status conditions and the status Tollway owns: built by the translation, settled against the object."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from tollway.api import Condition

Status = Literal["True", "False", "Unknown"]
#: metav1.Condition's limit on a message; a longer one (many failed versions) is cut, not refused.
MESSAGE_LIMIT = 32768


def timestamp(now: datetime) -> str:
    """RFC 3339 in UTC, to the second, as Kubernetes writes metav1.Time."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(
    kind: str, status: Status, reason: str, message: str = "", *, generation: int, now: datetime
) -> Condition:
    return Condition(
        type=kind,
        status=status,
        reason=reason,
        message=message if len(message) <= MESSAGE_LIMIT else message[: MESSAGE_LIMIT - 1] + "…",
        observed_generation=generation,
        last_transition_time=timestamp(now),
    )


def settle(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any] | None:
    """The status to write, or None when the object already shows `desired`.

    Each condition keeps its lastTransitionTime while its status stays the same, so a reconcile that
    changes nothing produces exactly what the object holds, and no write.
    """
    before = {item.get("type"): item for item in current.get("conditions") or []}
    settled = dict(desired)
    conditions = []
    for item in desired.get("conditions", []):
        previous = before.get(item["type"]) or {}
        kept = previous.get("status") == item["status"] and previous.get("lastTransitionTime")
        conditions.append({**item, "lastTransitionTime": kept} if kept else item)
    if "conditions" in desired:
        settled["conditions"] = conditions
    unchanged = all(
        current.get(key) == value for key, value in settled.items() if key != "conditions"
    ) and all(before.get(item["type"]) == item for item in conditions)
    return None if unchanged else settled


def changed_conditions(current: Mapping[str, Any], written: Mapping[str, Any]) -> list[Condition]:
    """The conditions whose status or reason the write changes: worth an event and a log line."""
    before = {item.get("type"): item for item in current.get("conditions") or []}
    changed = []
    for item in written.get("conditions", []):
        previous = before.get(item["type"]) or {}
        if (previous.get("status"), previous.get("reason")) != (item["status"], item["reason"]):
            changed.append(Condition.model_validate(item))
    return changed


def apply_failed(status: Mapping[str, Any], message: str, now: datetime) -> dict[str, Any]:
    """`status` with Ready=False and Degraded=True for a child the API server refused."""
    generation = int(status.get("observedGeneration", 0))
    failed = {
        "Ready": condition("Ready", "False", "ApplyFailed", message, generation=generation, now=now),
        "Degraded": condition("Degraded", "True", "ApplyFailed", message, generation=generation, now=now),
    }
    conditions = [
        failed[item["type"]].model_dump(by_alias=True) if item["type"] in failed else item
        for item in status.get("conditions", [])
    ]
    return {**status, "conditions": conditions}


def event_type(item: Condition) -> Literal["Normal", "Warning"] | None:
    """How a change of this condition is announced as a Kubernetes Event; None: not at all (Progressing)."""
    if item.type == "Progressing":
        return None
    trouble = item.reason == "InvalidSpec" or (item.type == "Degraded" and item.status == "True")
    return "Warning" if trouble else "Normal"
