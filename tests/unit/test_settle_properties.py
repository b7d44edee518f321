"""Properties of status settling, over generated sequences of condition changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tollway.translate.conditions import condition, settle, timestamp

T0 = datetime(2026, 1, 1, tzinfo=UTC)
statuses = st.sampled_from(["True", "False", "Unknown"])
steps = st.lists(
    st.tuples(statuses, statuses, st.integers(min_value=1, max_value=5)), min_size=1, max_size=12
)


def desired(ready: str, degraded: str, generation: int, minute: int) -> dict[str, Any]:
    now = T0 + timedelta(minutes=minute)
    made = [
        condition("Ready", ready, "Because", generation=generation, now=now),  # type: ignore[arg-type]
        condition("Degraded", degraded, "Because", generation=generation, now=now),  # type: ignore[arg-type]
    ]
    return {"observedGeneration": generation, "conditions": [item.model_dump(by_alias=True) for item in made]}


@given(steps)
def test_settling_converges_and_moves_times_only_on_transitions(sequence: list[tuple[str, str, int]]) -> None:
    shown: dict[str, Any] = {}
    for minute, (ready, degraded, generation) in enumerate(sequence):
        want = desired(ready, degraded, generation, minute)
        written = settle(shown, want)
        if written is None:
            continue
        before = {item["type"]: item for item in shown.get("conditions", [])}
        for item in written["conditions"]:
            previous = before.get(item["type"])
            if previous is not None and previous["status"] == item["status"]:
                assert item["lastTransitionTime"] == previous["lastTransitionTime"]
            else:
                assert item["lastTransitionTime"] == timestamp(T0 + timedelta(minutes=minute))
        shown = written
        assert settle(shown, desired(ready, degraded, generation, minute + 1)) is None  # no second write
