"""SLAs: the spec in the rules' terms, and the settlement of a period from its counts. One module for the
operator's status, the recording rules' maintenance windows and `tollway sla-report`, so that all three
exclude the same minutes and owe the same credits."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from tollway.api.api_tier import ApiTier, Pricing
from tollway.api.base import decimal
from tollway.api.sla import WEEKDAYS
from tollway.api.sla import Sla as SlaSpec
from tollway.ir.sla import Credit, OneOffWindow, Sla, WeeklyWindow
from tollway.ir.state import SlaCounts

PERCENT = Decimal(100)
FIGURE = Decimal("0.001")
"""Percentages are kept to a thousandth (99.999 % is a common target)."""
MONEY = Decimal("0.000001")


def plan_sla(spec: SlaSpec) -> Sla:
    def minute_of_week(day: str, start: str) -> int:
        hours, minutes = start.split(":")
        return WEEKDAYS.index(day) * 1440 + int(hours) * 60 + int(minutes)

    def seconds(moment: str) -> int:
        return int(datetime.fromisoformat(moment).timestamp())

    return Sla(
        availability=spec.availability,
        latency_ms=spec.latency.threshold_ms if spec.latency else None,
        latency_percent=spec.latency.percent if spec.latency else "99",
        weekly=tuple(
            WeeklyWindow(
                start_minute=minute_of_week(window.day, window.start), minutes=window.duration_minutes
            )
            for window in spec.maintenance.weekly
        ),
        one_off=tuple(
            OneOffWindow(start=seconds(window.start), end=seconds(window.end))
            for window in spec.maintenance.one_off
        ),
        credits=tuple(Credit(below=credit.below, percent=credit.credit_percent) for credit in spec.credits),
    )


def period_of(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m")


def period_bounds(period: str) -> tuple[datetime, datetime]:
    """'2026-11' → its first instant and the next month's, UTC."""
    start = datetime.strptime(period, "%Y-%m").replace(tzinfo=UTC)
    following = start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
    return start, following


def excluded_minutes(sla: Sla, start: datetime, end: datetime) -> int:
    """Minutes between `start` and `end` (whole minutes) in maintenance. A minute is in maintenance when its
    middle is: the rules ask that of `time() - 30` each minute, for the minute that ends then."""
    first = int(start.timestamp()) // 60
    return sum(sla.in_maintenance(minute * 60 + 30) for minute in range(first, int(end.timestamp()) // 60))


@dataclass(frozen=True)
class Settlement:
    """A period's figures for a tier or a customer, in percent (and the currency of the usage cost)."""

    availability: Decimal
    latency_attainment: Decimal | None
    error_budget_remaining: Decimal
    credit_percent: Decimal
    credit: Decimal


def settle(sla: Sla, counts: SlaCounts, cost: Decimal) -> Settlement:
    """A period's figures from its counts outside maintenance, `cost` being the usage cost the credit is a
    share of. A period without traffic met its objectives: no request failed, none was slow."""
    availability = PERCENT - _share(counts.errors, counts.requests)
    attainment = (
        None if sla.latency_ms is None else _share(counts.latency_within, counts.latency_measured, 100)
    )
    percent = credit_percent(sla, availability)
    return Settlement(
        availability=availability,
        latency_attainment=attainment,
        error_budget_remaining=budget_remaining(sla, availability),
        credit_percent=percent,
        credit=(cost * percent / PERCENT).quantize(MONEY),
    )


def _share(part: float, whole: float, empty: int = 0) -> Decimal:
    """`part` of `whole` in percent, within 0 and 100; `empty` when `whole` is 0."""
    if whole <= 0:
        return Decimal(empty)
    return min(PERCENT, max(Decimal(0), PERCENT * Decimal(str(part)) / Decimal(str(whole)))).quantize(FIGURE)


def usage_cost(pricing: Pricing, input_tokens: float, output_tokens: float) -> Decimal:
    """Tokens at a tier's prices per 1,000."""
    return (
        Decimal(str(input_tokens)) * decimal(pricing.input_per1k_tokens)
        + Decimal(str(output_tokens)) * decimal(pricing.output_per1k_tokens)
    ) / 1000


def credit_percent(sla: Sla, availability: Decimal) -> Decimal:
    """The credit of the lowest threshold that `availability` falls below; 0 when it is below none."""
    owed = [decimal(credit.percent) for credit in sla.credits if availability < decimal(credit.below)]
    return owed[-1] if owed else Decimal(0)


def budget_remaining(sla: Sla, availability: Decimal) -> Decimal:
    """Percent of the error budget (100 - target) not spent; 0 once spent (a 100 % target has none to
    spend: 100 until a request fails)."""
    budget = PERCENT - decimal(sla.availability)
    spent = PERCENT - availability
    if budget <= 0:
        return PERCENT if spent <= 0 else Decimal(0)
    return max(Decimal(0), PERCENT * (budget - spent) / budget).quantize(FIGURE)


def decimal_text(value: Decimal) -> str:
    """A figure as status and reports write it: no exponent, no trailing zeros ("99.5", "100")."""
    return format(value.normalize(), "f")


WHOLE_TIER = "*"
"""The consumer column of a tier's own row in a report."""


def report_rows(
    resource: ApiTier, sla: Sla, period: str, counts: Mapping[str, SlaCounts], excluded: int
) -> list[dict[str, str]]:
    """`tollway sla-report`'s rows of one tier (`sla`: its planned SLA): the tier as a whole (its counts under
    the key ""), then each consumer, whose own availability decides the credit it is owed on its own usage
    cost."""
    pricing = resource.spec.pricing
    rows = []
    for consumer, tally in sorted(counts.items()):
        settled = settle(sla, tally, usage_cost(pricing, tally.input_tokens, tally.output_tokens))
        attainment = settled.latency_attainment if not consumer else None
        rows.append(
            {
                "period": period,
                "namespace": resource.metadata.namespace,
                "tier": resource.metadata.name,
                "consumer": consumer or WHOLE_TIER,
                "requests": str(round(tally.requests)),
                "errors": str(round(tally.errors)),
                "availability": decimal_text(settled.availability),
                "latency_attainment": "" if attainment is None else decimal_text(attainment),
                "excluded_minutes": str(excluded),
                "credit_percent": decimal_text(settled.credit_percent),
                "credit": decimal_text(settled.credit),
                "currency": pricing.currency,
            }
        )
    return rows
