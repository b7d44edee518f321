"""An ApiTier's service-level agreement: the objectives a tier promises its customers, the maintenance windows
excluded from them, and the credits owed when a calendar month misses them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, get_args

from pydantic import Field, StringConstraints

from tollway.api.base import Currency, DecimalString, Rule, TollwayModel, decimal

Weekday = Literal["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]
WEEKDAYS: tuple[str, ...] = get_args(Weekday)
"""In PromQL's day_of_week() order (0 is Sunday)."""
#: A time of day, HH:MM (24-hour, UTC).
TimeOfDay = Annotated[str, StringConstraints(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", max_length=5)]
#: An RFC 3339 time; a plain string (no `format: date-time`, which CEL would read as a timestamp already)
#: for the rule's `timestamp()`.
Moment = Annotated[
    str,
    StringConstraints(
        pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$",
        max_length=35,
    ),
]
MINUTES_PER_WEEK = 7 * 24 * 60


def _percent_rule(field: str) -> Rule:
    """`field` (a DecimalString percentage) is at most 100."""
    attribute = field.lstrip(".")
    python_name = "".join(f"_{char.lower()}" if char.isupper() else char for char in attribute)
    return Rule(
        field=field,
        message=f"{attribute} must be a percentage between 0 and 100",
        cel=f"double(self.{attribute}) <= 100.0",
        holds=lambda model: decimal(getattr(model, python_name)) <= 100,
    )


class WeeklyWindow(TollwayModel):
    """A window that recurs every week, in UTC."""

    day: Weekday
    start: TimeOfDay
    """HH:MM, UTC."""
    duration_minutes: int = Field(ge=1, le=MINUTES_PER_WEEK)
    """At most a week (7 days: 10080 minutes)."""


class OneOffWindow(TollwayModel):
    """A window that happens once, from `start` to `end` (RFC 3339)."""

    rules = (
        Rule(
            field=".end",
            message="end must be after start",
            cel="timestamp(self.end) > timestamp(self.start)",
            holds=lambda window: datetime.fromisoformat(window.end) > datetime.fromisoformat(window.start),
        ),
    )

    start: Moment
    end: Moment
    reason: Annotated[str, StringConstraints(max_length=256)] = ""


class Maintenance(TollwayModel):
    """Windows excluded from the objectives: requests inside them count neither for nor against the SLA."""

    weekly: list[WeeklyWindow] = Field(default_factory=list, max_length=16)
    one_off: list[OneOffWindow] = Field(default_factory=list, max_length=32)


SLA_LATENCY_BUCKETS_MS = (
    100, 250, 500, 1000, 2000, 2500, 3000, 5000, 7500, 10000, 15000, 20000, 30000, 60000,
)  # fmt: skip
"""The bounds (ms) of the gateway's SLA latency histogram: a tier's latency target is one of them, so that the
share of requests within it is counted exactly (Envoy's bucket bounds are fixed when it starts, so they
cannot follow each tier's target)."""


class LatencyObjective(TollwayModel):
    """`percent` of the counted requests answer (first byte) within `thresholdMs`: P99 under 5 s is
    `{thresholdMs: 5000, percent: "99"}`."""

    rules = (
        _percent_rule(".percent"),
        Rule(
            field=".thresholdMs",
            message="thresholdMs must be one of " + ", ".join(map(str, SLA_LATENCY_BUCKETS_MS)),
            cel=f"self.thresholdMs in {list(SLA_LATENCY_BUCKETS_MS)}",
            holds=lambda objective: objective.threshold_ms in SLA_LATENCY_BUCKETS_MS,
        ),
    )

    threshold_ms: int = Field(ge=1, le=3_600_000)
    percent: DecimalString = "99"


class Credit(TollwayModel):
    """A step of the credit schedule: a month whose availability is below `below` % earns `creditPercent` %
    of the customer's usage cost for that month."""

    rules = (_percent_rule(".below"), _percent_rule(".creditPercent"))

    below: DecimalString
    credit_percent: DecimalString


class Sla(TollwayModel):
    """What this tier promises each customer per calendar month (UTC: the period every figure and credit is
    computed over), measured at the gateway."""

    rules = (
        _percent_rule(".availability"),
        Rule(
            field=".credits",
            message="credits must be ordered by strictly descending `below` thresholds",
            cel="!has(self.credits) || (self.credits.map(c, -double(c.below)).isSorted() && "
            "self.credits.all(c, self.credits.exists_one(d, double(d.below) == double(c.below))))",
            holds=lambda sla: all(
                decimal(higher.below) > decimal(lower.below)
                for higher, lower in zip(sla.credits, sla.credits[1:], strict=False)
            ),
        ),
    )

    availability: DecimalString
    """Percent of the counted requests that must not fail (5xx, the gateway's own included); requests
    refused by the caller's own limits (429) or abandoned by it do not count."""
    latency: LatencyObjective | None = None
    maintenance: Maintenance = Maintenance()
    credits: list[Credit] = Field(default_factory=list, max_length=10)
    """Owed per customer on the availability objective only (the latency objective is reported and alerted
    on, not credited): the step with the lowest threshold that the month's availability falls below."""


class SlaStatus(TollwayModel):
    """The current calendar month so far, from the gateway's counters in Prometheus (maintenance excluded)."""

    period: str
    """YYYY-MM."""
    availability: DecimalString
    """Percent of counted requests that did not fail; 100 without traffic."""
    latency_attainment: DecimalString | None = None
    """Percent of counted requests answered within the latency objective's threshold."""
    error_budget_remaining: DecimalString
    """Percent of the month's error budget (100 - availability target) not spent yet; 0 when overspent."""
    credit_percent: DecimalString = "0"
    """What the tier owes its customers so far (the whole tier's availability; per customer: `tollway
    sla-report`)."""
    credit: DecimalString = "0"
    """credit_percent of the tier's usage cost this month."""
    currency: Currency = "USD"
    requests: int = 0
    """Requests counted for availability (outside maintenance)."""
    errors: int = 0
    latency_within: int = 0
    """Requests answered within the latency threshold, of `latencyMeasured`."""
    latency_measured: int = 0
    input_tokens: int = 0
    """Tokens used this month (maintenance included), which the credit is a share of the cost of."""
    output_tokens: int = 0
    observed_at: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
