"""SLAs: maintenance windows, the settlement of a period and the report's rows (pure functions)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from tollway.api import ApiTier
from tollway.api.parse import parse
from tollway.ir.sla import Sla
from tollway.ir.state import SlaCounts
from tollway.translate.sla import (
    excluded_minutes,
    period_bounds,
    plan_sla,
    report_rows,
    settle,
)

from builders import api_tier

CREDITS = [{"below": "99.9", "creditPercent": "10"}, {"below": "99", "creditPercent": "25"}]


def gold(**sla: Any) -> ApiTier:
    document = api_tier("gold", **{"spec.sla": {"availability": "99.9", "credits": CREDITS, **sla}})
    return parse(ApiTier, document)


def planned(**sla: Any) -> Sla:
    spec = gold(**sla).spec.sla
    assert spec is not None
    return plan_sla(spec)


def test_a_period_is_a_calendar_month_in_utc() -> None:
    assert period_bounds("2026-12") == (datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))


def test_weekly_windows_recur_in_utc_and_one_off_windows_happen_once() -> None:
    """November 2026 has five Sundays; 02:00-04:00 on each is 600 minutes; a one-off window that overlaps
    one of them adds only the minutes outside it."""
    weekly = [{"day": "Sunday", "start": "02:00", "durationMinutes": 120}]
    november = period_bounds("2026-11")
    assert excluded_minutes(planned(maintenance={"weekly": weekly}), *november) == 600
    one_off = [{"start": "2026-11-29T03:00:00Z", "end": "2026-11-29T05:00:00Z"}]
    assert excluded_minutes(planned(maintenance={"weekly": weekly, "oneOff": one_off}), *november) == 660


def test_a_weekly_window_may_run_past_the_end_of_the_week() -> None:
    """Saturday 23:00 for two hours ends on Sunday 01:00: Saturday 28 November's window runs into the 29th."""
    sla = planned(maintenance={"weekly": [{"day": "Saturday", "start": "23:00", "durationMinutes": 120}]})
    start, end = datetime(2026, 11, 29, tzinfo=UTC), datetime(2026, 11, 29, 2, 0, tzinfo=UTC)
    assert excluded_minutes(sla, start, end) == 60
    assert sla.in_maintenance(int(datetime(2026, 11, 29, 0, 59, 59, tzinfo=UTC).timestamp()))
    assert not sla.in_maintenance(int(datetime(2026, 11, 29, 1, 0, tzinfo=UTC).timestamp()))


def test_the_credit_is_the_lowest_step_the_availability_falls_below() -> None:
    sla = planned()
    owed = {
        Decimal(failed): settle(sla, SlaCounts(requests=1000, errors=failed), Decimal(200)).credit_percent
        for failed in (0, 1, 2, 10, 11)
    }
    assert owed == {0: 0, 1: 0, 2: 10, 10: 10, 11: 25}
    settled = settle(sla, SlaCounts(requests=1000, errors=11), Decimal(200))
    assert (settled.availability, settled.credit, settled.error_budget_remaining) == (
        Decimal("98.9"),
        Decimal(50),
        Decimal(0),
    )


def test_a_period_without_traffic_is_no_breach() -> None:
    settled = settle(planned(latency={"thresholdMs": 5000}), SlaCounts(), Decimal(0))
    assert (settled.availability, settled.latency_attainment, settled.credit_percent) == (100, 100, 0)
    assert settled.error_budget_remaining == 100


def test_the_error_budget_left_is_the_share_not_spent() -> None:
    """99.9 % allows 0.1 % of requests to fail; 0.025 % failed: three quarters of the budget are left."""
    settled = settle(planned(), SlaCounts(requests=40000, errors=10), Decimal(0))
    assert (settled.availability, settled.error_budget_remaining) == (Decimal("99.975"), Decimal(75))


def test_latency_attainment_is_the_share_answered_within_the_threshold() -> None:
    sla = planned(latency={"thresholdMs": 5000, "percent": "99"})
    counts = SlaCounts(requests=1000, latency_within=985, latency_measured=1000)
    attainment = settle(sla, counts, Decimal(0)).latency_attainment
    assert attainment == Decimal("98.5")
    assert settle(planned(), counts, Decimal(0)).latency_attainment is None  # no latency objective


def test_each_consumer_is_owed_on_its_own_availability_and_cost() -> None:
    """At 0.002 per 1k input tokens: acme's 1M tokens cost 2, globex's 5; globex's 2 % errors earn it 25 %."""
    tier = parse(
        ApiTier,
        api_tier(
            "gold",
            **{
                "spec.sla": {"availability": "99.9", "credits": CREDITS},
                "spec.pricing": {"inputPer1kTokens": "0.002"},
            },
        ),
    )
    assert tier.spec.sla is not None
    counts = {
        "": SlaCounts(requests=2000, errors=20, input_tokens=3_500_000),
        "acme": SlaCounts(requests=1000, errors=0, input_tokens=1_000_000),
        "globex": SlaCounts(requests=1000, errors=20, input_tokens=2_500_000),
    }
    rows = report_rows(tier, plan_sla(tier.spec.sla), "2026-11", counts, 840)
    assert [(row["consumer"], row["availability"], row["credit_percent"], row["credit"]) for row in rows] == [
        ("*", "99", "10", "0.7"),
        ("acme", "100", "0", "0"),
        ("globex", "98", "25", "1.25"),
    ]
    assert {row["excluded_minutes"] for row in rows} == {"840"}
