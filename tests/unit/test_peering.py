"""Which replica serves under kopf peering: the rule the resync loop follows so that a standby stays quiet."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tollway.runner import peering_priority
from tollway.translate.peering import outranked

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def peer(priority: int, seconds_ago: float, lifetime: int = 60) -> dict[str, object]:
    return {
        "priority": priority,
        "lastseen": (NOW - timedelta(seconds=seconds_ago)).isoformat(),
        "lifetime": lifetime,
    }


def test_a_live_peer_with_a_higher_priority_outranks_this_replica() -> None:
    assert outranked({"me": peer(5, 1), "newer": peer(9, 3)}, 5, NOW)


def test_the_highest_replica_and_one_alone_are_not_outranked() -> None:
    assert not outranked({"me": peer(9, 1), "older": peer(5, 3)}, 9, NOW)
    assert not outranked({"me": peer(9, 1)}, 9, NOW)
    assert not outranked({}, 9, NOW)


def test_a_peer_past_its_lifetime_no_longer_counts() -> None:
    assert not outranked({"me": peer(5, 1), "gone": peer(9, 61)}, 5, NOW)
    assert outranked({"me": peer(5, 1), "slow": peer(9, 59)}, 5, NOW)


def test_each_replica_gets_a_distinct_priority_that_grows_with_its_start_time() -> None:
    first = peering_priority()
    others = {peering_priority() for _ in range(200)}
    assert len(others) > 150  # three random digits below the millisecond: same-millisecond starts differ
    assert min(others) // 1000 >= first // 1000
