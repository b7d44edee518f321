"""Reading a model's live figures from Prometheus (prometheus-api-client), from Tollway's recording rules."""

from __future__ import annotations

import math
from typing import Any

from prometheus_api_client import PrometheusConnect
from urllib3.util.retry import Retry

from tollway.ir.names import KEY_ALERT, KEY_SIGNALS, usage_metric
from tollway.ir.state import (
    CostCounts,
    KeyAlertState,
    KeyPattern,
    MetricsState,
    SlaCounts,
    SlaState,
    UsageState,
)
from tollway.render.monitoring import selector

TIMEOUT_SECONDS = 3

#: Status field → the query that gives it (one number per model; versions folded in).
QUERIES = {
    "p50_ms": "max(tollway:request_latency_ms:p50{{{s}}})",
    "p95_ms": "max(tollway:request_latency_ms:p95{{{s}}})",
    "p99_ms": "max(tollway:request_latency_ms:p99{{{s}}})",
    "queue_depth": "sum(tollway:queue_depth{{{s}}})",
    "requests_per_second": "sum(tollway:requests:rate1m{{{s}}})",
    "error_rate": "max(tollway:error_ratio:rate5m{{{s}}})",
    "estimated_wait_seconds": "max(tollway:estimated_wait_seconds{{{s}}})",
}
#: status.cost field → its query (the cost rules' figures: none without spec.cost; per token, none without
#: traffic).
COST_QUERIES = {
    "cost_per_hour": "sum(tollway:model_cost_per_hour{{{s}}})",
    "input_per1k_tokens": "sum(tollway:model_cost_per_1k_input_tokens:1h{{{s}}})",
    "output_per1k_tokens": "sum(tollway:model_cost_per_1k_output_tokens:1h{{{s}}})",
}


def _client(url: str) -> PrometheusConnect:
    return PrometheusConnect(url, disable_ssl=True, timeout=TIMEOUT_SECONDS, retry=Retry(total=0))


def model_metrics(url: str, namespace: str, model: str) -> MetricsState:
    """The model's figures now; unreachable (with the error) instead of an exception. A figure Prometheus
    has no series for yet (no traffic) is left out."""
    try:
        client = _client(url)

        def figures(queries: dict[str, str], digits: int) -> dict[str, float]:
            values: dict[str, float] = {}
            for field, query in queries.items():
                result: Any = client.custom_query(query.format(s=selector(namespace, model)))
                if result:
                    value = float(result[0]["value"][1])
                    if not math.isnan(value):  # NaN (0/0 before any request) is no figure
                        values[field] = round(value, digits)
            return values

        # Money to a millionth: a cost per 1k tokens is often below a thousandth.
        return MetricsState(reachable=True, values=figures(QUERIES, 3), cost=figures(COST_QUERIES, 6))
    except Exception as error:
        return MetricsState(reachable=False, error=_failure(error))


def usage_counter(namespace: str, tier: str, kind: str) -> str:
    """The gateway's usage counter of one kind (requests, input, output) for a tier, as a selector."""
    return f'{usage_metric(f"usage_{kind}")}{{namespace="{namespace}",tier="{tier}"}}'


def tier_usage(url: str, namespace: str, tier: str, since_seconds: int) -> UsageState:
    """A tier's requests and tokens over the last `since_seconds` (today so far), from the gateway's usage
    counters; unreachable (with the error) instead of an exception."""
    window = f"{max(since_seconds, 60)}s"
    try:
        client = _client(url)

        def total(kind: str) -> int:
            result: Any = client.custom_query(
                f"sum(increase({usage_counter(namespace, tier, kind)}[{window}]))"
            )
            return round(float(result[0]["value"][1])) if result else 0

        # Per consumer, not per series: each Envoy replica exports its own.
        requests = usage_counter(namespace, tier, "requests")
        active: Any = client.custom_query(f"count(sum by (consumer) (increase({requests}[{window}])) > 0)")
        return UsageState(
            reachable=True,
            consumers=int(float(active[0]["value"][1])) if active else 0,
            requests=total("requests"),
            input_tokens=total("input"),
            output_tokens=total("output"),
        )
    except Exception as error:
        return UsageState(reachable=False, error=_failure(error))


def key_alerts(url: str, namespace: str) -> KeyAlertState:
    """The keys of `namespace` whose TollwayKeyPatternChanged fires now, with their last hour's signals."""
    try:
        client = _client(url)
        firing: Any = client.custom_query(
            f'ALERTS{{alertname="{KEY_ALERT}",alertstate="firing",namespace="{namespace}"}}'
        )
        keys = {(str(alert["metric"]["tier"]), str(alert["metric"]["consumer"])) for alert in firing}
        figures: dict[tuple[str, str], dict[str, int]] = {key: {} for key in keys}
        for signal in KEY_SIGNALS:
            found: Any = client.custom_query(
                f'tollway:consumer_{signal}:increase1h{{namespace="{namespace}"}}'
            )
            for series in found:
                key = (str(series["metric"].get("tier")), str(series["metric"].get("consumer")))
                if key in figures:
                    figures[key][signal] = round(float(series["value"][1]))
        return KeyAlertState(
            reachable=True, firing={key: KeyPattern(**counts) for key, counts in figures.items()}
        )
    except Exception as error:
        return KeyAlertState(reachable=False, error=_failure(error))


def _failure(error: Exception) -> str:
    return f"{type(error).__name__}: {str(error)[:200]}"


def period_range(start: int, end: int) -> str:
    """The range that, ending at `end` (`[range] @ end`), holds exactly the per-minute samples recorded in the
    period from `start`: one second short, so that the minute before it, recorded at `start`, stays out."""
    return f"{max(end - start - 1, 1)}s"


def sla_counts(
    url: str, namespace: str, tier: str, start: int, end: int, *, by: str = ""
) -> dict[str, SlaCounts]:
    """A tier's SLA counts between the unix seconds `start` and `end`, per value of the label `by`
    ("consumer"; "" for the whole tier, under the key ""). The SLA counts add up the recorded per-minute
    series (maintenance already left out) over exactly the period: a range of its length ending at its end,
    one second short so that the minute before the period, recorded at its first instant, stays out
    whether the range's start is closed (Prometheus 2) or open (3) (`period_range`). Raises when Prometheus
    cannot answer."""
    client = _client(url)
    scope = f'namespace="{namespace}",tier="{tier}"'
    span = period_range(start, end)

    def per_group(expression: str) -> dict[str, float]:
        result: Any = client.custom_query(f"sum by ({by}) ({expression})")
        return {item["metric"].get(by, ""): float(item["value"][1]) for item in result}

    def recorded(name: str) -> dict[str, float]:
        return per_group(f"sum_over_time(tollway:tier_sla_{name}:increase1m{{{scope}}}[{span}] @ {end})")

    def used(kind: str) -> dict[str, float]:
        return per_group(f"increase({usage_counter(namespace, tier, kind)}[{span}] @ {end})")

    figures = {
        "requests": recorded("requests"),
        "errors": recorded("errors"),
        "input_tokens": used("input"),
        "output_tokens": used("output"),
    }
    if not by:  # the latency histogram is the tier's, not each consumer's
        figures["latency_within"] = recorded("latency_within")
        figures["latency_measured"] = recorded("latency_measured")
    groups = sorted({group for values in figures.values() for group in values} | ({""} if not by else set()))
    return {
        group: SlaCounts(**{field: values.get(group, 0.0) for field, values in figures.items()})
        for group in groups
    }


def tier_sla(url: str, namespace: str, tier: str, start: int, end: int) -> SlaState:
    """The tier's SLA counts of the period so far (see `sla_counts`); unreachable (with the error) instead of
    an exception."""
    try:
        counts = sla_counts(url, namespace, tier, start, end)[""]
    except Exception as error:
        return SlaState(reachable=False, error=_failure(error))
    return SlaState(reachable=True, counts=counts)


def cost_counts(url: str, namespace: str, model: str, start: int, end: int) -> CostCounts:
    """A model's replica-hours between the unix seconds `start` and `end` (its per-minute recorded series
    added up over `period_range`) and the tokens the gateway counted for it, per tier. Raises when Prometheus
    cannot answer."""
    client = _client(url)
    matchers = selector(namespace, model)
    span = period_range(start, end)
    hours: Any = client.custom_query(
        f"sum(sum_over_time(tollway:model_replica_hours:increase1m{{{matchers}}}[{span}] @ {end}))"
    )

    def per_tier(side: str) -> dict[str, float]:
        metric = usage_metric(f"model_{side}_tokens")
        result: Any = client.custom_query(f"sum by (tier) (increase({metric}{{{matchers}}}[{span}] @ {end}))")
        return {item["metric"]["tier"]: float(item["value"][1]) for item in result}

    return CostCounts(
        replica_hours=float(hours[0]["value"][1]) if hours else 0.0,
        input_tokens=per_tier("input"),
        output_tokens=per_tier("output"),
    )
