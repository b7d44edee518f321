"""`tollway sla-report` on a real Prometheus holding a month of the gateway's history: November 2026 for tier
`gold`, written as blocks by `promtool tsdb create-blocks-from openmetrics`, with the per-minute SLA rules
backfilled by `promtool tsdb create-blocks-from rules` (evaluated by Prometheus over that history, as it would
have recorded them). Traffic runs on four days, sampled every 30 s as a scrape would; the other days nobody
calls (no breach). An outage inside the Sunday maintenance window is hidden; one that no window covers is not.

Nothing here is timed: the figures are those of the blocks, whatever the machine's load. Prometheus evaluates
a group at an offset within its interval, so a per-minute rule's window straddles two minutes: counts at the
edges of an outage or a traffic day may be off by a fraction of a minute's, hence the tolerances."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tollway.render.monitoring import gateway_rule_groups
from tollway.translate import translate_all

from testbed import backfill

MONTH = (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))
TRAFFIC_DAYS = (1, 8, 20, 30)
"""November days with traffic; November 1 and 8 are Sundays (maintenance from 02:00 to 04:00)."""
HIDDEN_OUTAGE = (datetime(2026, 11, 8, 2, 10, tzinfo=UTC), datetime(2026, 11, 8, 3, 0, tzinfo=UTC))
"""Every request fails, inside the Sunday 02:00-04:00 maintenance window."""
OUTAGE = (datetime(2026, 11, 20, 10, 0, tzinfo=UTC), datetime(2026, 11, 20, 11, 0, tzinfo=UTC))
"""globex's requests fail, outside any window."""
ACME_IDLE_DAY = 30
SAMPLE_SECONDS = 30

GOLD: dict[str, Any] = {
    "apiVersion": "tollway.dev/v1alpha1",
    "kind": "ApiTier",
    "metadata": {"name": "gold", "namespace": "ai"},
    "spec": {
        "models": ["chat"],
        "auth": {"apiKeys": {"secretSelector": {"matchLabels": {"tollway.dev/tier": "gold"}}}},
        "pricing": {"inputPer1kTokens": "0.002", "outputPer1kTokens": "0.004"},
        "sla": {
            "availability": "99.9",
            "latency": {"thresholdMs": 5000, "percent": "99"},
            "maintenance": {
                "weekly": [{"day": "Sunday", "start": "02:00", "durationMinutes": 120}],
                "oneOff": [{"start": "2026-11-14T22:00:00Z", "end": "2026-11-15T02:00:00Z"}],
            },
            "credits": [{"below": "99.9", "creditPercent": "10"}, {"below": "99", "creditPercent": "25"}],
        },
    },
}
CHAT = {
    "apiVersion": "tollway.dev/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"name": "chat", "namespace": "ai"},
    "spec": {
        "model": {"repository": "s3://models/chat", "backend": "python"},
        "versions": [{"version": "1"}],
    },
}


def within(moment: datetime, span: tuple[datetime, datetime]) -> bool:
    return span[0] <= moment < span[1]


def per_half_minute(consumer: str, moment: datetime) -> dict[str, int]:
    """What the gateway counts for `consumer` in the 30 s from `moment`: 100 requests a minute, each with 10
    input and 5 output tokens."""
    if consumer == "acme" and moment.day == ACME_IDLE_DAY:
        return {"requests": 0, "errors": 0, "input": 0, "output": 0}
    failing = within(moment, HIDDEN_OUTAGE) or (consumer == "globex" and within(moment, OUTAGE))
    return {"requests": 50, "errors": 50 if failing else 0, "input": 500, "output": 250}


def openmetrics() -> str:
    """The month as OpenMetrics text."""
    moments = [
        datetime(2026, 11, day, tzinfo=UTC) + timedelta(seconds=SAMPLE_SECONDS * index)
        for day in TRAFFIC_DAYS
        for index in range(86400 // SAMPLE_SECONDS + 1)
    ]
    samples: dict[str, list[tuple[datetime, int]]] = {}
    for consumer in ("acme", "globex"):
        counts = [(moment, per_half_minute(consumer, moment)) for moment in moments]
        labels = f'namespace="ai",tier="gold",consumer="{consumer}",pod="gateway-0"'
        for name, metric in (
            ("requests", "envoy_tollway_sla_requests"),
            ("errors", "envoy_tollway_sla_errors"),
            ("input", "envoy_tollway_usage_input"),
            ("output", "envoy_tollway_usage_output"),
        ):
            samples[f"{metric}{{{labels}}}"] = [(moment, count[name]) for moment, count in counts]
    histogram = 'namespace="ai",tier="gold",pod="gateway-0"'
    # 200 counted requests each 30 s on the tier's histogram, 199 of them within the 5 s threshold
    samples[f'envoy_tollway_sla_latency_ms_bucket{{{histogram},le="5000"}}'] = [
        (moment, 199) for moment in moments
    ]
    samples[f"envoy_tollway_sla_latency_ms_count{{{histogram}}}"] = [(moment, 200) for moment in moments]
    return backfill.openmetrics(samples)


@pytest.fixture(scope="module")
def prometheus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prometheus on the backfilled month: raw counters and the per-minute SLA rules over them."""
    gateway = translate_all([GOLD, CHAT], MONTH[0]).gateways["ai"].plan.gateway
    assert gateway is not None
    sla_groups = [group for group in gateway_rule_groups(gateway) if ".sla." in group["name"]]
    workdir = tmp_path_factory.mktemp("sla-report")
    with backfill.backfilled_prometheus(workdir, openmetrics(), sla_groups, MONTH) as url:
        yield url


def sla_report(url: str, workdir: Path, *options: str) -> str:
    return backfill.report("sla-report", url, [GOLD], workdir, *options)


def test_the_month_settles_per_tier_and_consumer_with_maintenance_excluded(
    prometheus_url: str, tmp_path: Path
) -> None:
    """Maintenance: five Sundays of two hours and a four-hour one-off window, 840 minutes. acme calls on
    three days, 100 requests a minute, 3 x 1440 minutes less two Sunday windows outside maintenance, where
    the window of the 8th hides its outage: 408,000 requests, none failed, 100 %. globex calls on four days:
    552,000 requests, 6,000 failed in the hour no window covers: 98.913 %, below 99, so 25 % of its month's
    cost (5,760 minutes of 1,000 input and 500 output tokens at 0.002 and 0.004 per 1k: 23.04 USD) is owed:
    5.76 USD. The tier as a whole: 6,000 of 960,000 failed, 99.375 %; 199 of 200 within 5 s: 99.5 %."""
    report = sla_report(prometheus_url, tmp_path, "--format", "json")
    rows = {row["consumer"]: row for row in json.loads(report)}
    assert set(rows) == {"*", "acme", "globex"}
    assert {row["excluded_minutes"] for row in rows.values()} == {"840"}
    acme, globex, tier = rows["acme"], rows["globex"], rows["*"]
    assert int(acme["requests"]) == pytest.approx(408_000, rel=1e-3)
    assert (acme["errors"], acme["availability"], acme["credit_percent"], acme["credit"]) == (
        "0",
        "100",
        "0",
        "0",
    )
    assert int(globex["requests"]) == pytest.approx(552_000, rel=1e-3)
    assert int(globex["errors"]) == pytest.approx(6000, abs=150)
    assert float(globex["availability"]) == pytest.approx(98.913, abs=0.03)
    assert globex["credit_percent"] == "25"
    assert float(globex["credit"]) == pytest.approx(5.76, abs=0.01)
    assert int(tier["requests"]) == pytest.approx(960_000, rel=1e-3)
    assert float(tier["availability"]) == pytest.approx(99.375, abs=0.02)
    assert tier["credit_percent"] == "10"
    assert float(tier["credit"]) == pytest.approx(4.032, abs=0.01)
    assert float(tier["latency_attainment"]) == pytest.approx(99.5, abs=0.01)


def test_the_report_prints_a_table_and_csv(prometheus_url: str, tmp_path: Path) -> None:
    table = sla_report(prometheus_url, tmp_path).splitlines()
    assert table[0].split()[:4] == ["period", "namespace", "tier", "consumer"]
    assert [line.split()[3] for line in table[1:]] == ["*", "acme", "globex"]
    csv = sla_report(prometheus_url, tmp_path, "--format", "csv").splitlines()
    assert csv[0].startswith("period,namespace,tier,consumer,requests,errors,availability")
    assert csv[3].startswith("2026-11,ai,gold,globex,")
