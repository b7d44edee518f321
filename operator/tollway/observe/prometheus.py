"""Reading a model's live figures from Prometheus (prometheus-api-client), from Tollway's recording rules."""

from __future__ import annotations

import math
from typing import Any

from prometheus_api_client import PrometheusConnect
from urllib3.util.retry import Retry

from tollway.ir.names import usage_metric
from tollway.ir.state import MetricsState, UsageState
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


def model_metrics(url: str, namespace: str, model: str) -> MetricsState:
    """The model's figures now; unreachable (with the error) instead of an exception. A figure Prometheus
    has no series for yet (no traffic) is left out."""
    try:
        client = PrometheusConnect(url, disable_ssl=True, timeout=TIMEOUT_SECONDS, retry=Retry(total=0))
        values: dict[str, float] = {}
        for field, query in QUERIES.items():
            result: Any = client.custom_query(query.format(s=selector(namespace, model)))
            if result:
                value = float(result[0]["value"][1])
                if not math.isnan(value):  # NaN (0/0 before any request) is no figure
                    values[field] = round(value, 3)
    except Exception as error:
        return MetricsState(reachable=False, error=f"{type(error).__name__}: {str(error)[:200]}")
    return MetricsState(reachable=True, values=values)


def usage_counter(namespace: str, tier: str, kind: str) -> str:
    """The gateway's usage counter of one kind (requests, input, output) for a tier, as a selector."""
    return f'{usage_metric(f"usage_{kind}")}{{namespace="{namespace}",tier="{tier}"}}'


def tier_usage(url: str, namespace: str, tier: str, since_seconds: int) -> UsageState:
    """A tier's requests and tokens over the last `since_seconds` (today so far), from the gateway's usage
    counters; unreachable (with the error) instead of an exception."""
    window = f"{max(since_seconds, 60)}s"
    try:
        client = PrometheusConnect(url, disable_ssl=True, timeout=TIMEOUT_SECONDS, retry=Retry(total=0))

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
        return UsageState(reachable=False, error=f"{type(error).__name__}: {str(error)[:200]}")
