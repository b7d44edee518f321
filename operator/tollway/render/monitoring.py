"""Monitoring of one model: a ServiceMonitor for Triton, a PrometheusRule (recording rules and SLO alerts)
and a Grafana dashboard (a ConfigMap with the sidecar's label).

The recording rules are the names everything else reads (`tollway:...`): the operator's status, the
dashboard and the alerts. Without prometheus-operator the pods still carry the usual `prometheus.io/*`
scrape annotations, and `rule_groups()` is a plain Prometheus rule file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from tollway.api.sla import MINUTES_PER_WEEK
from tollway.ir.cost import ServingCost
from tollway.ir.gateway import Gateway, KeySignals, Tier
from tollway.ir.names import KEY_ALERT, KEY_SIGNALS, NEW_KEYS_SIGNAL, usage_metric
from tollway.ir.serving import Objectives, TritonServing
from tollway.ir.sla import Sla

Manifest = dict[str, Any]

MONITORING_API = "monitoring.coreos.com/v1"
DASHBOARD_LABEL = {"grafana_dashboard": "1"}
BY_VERSION = "namespace, model, version"
BY_MODEL = "namespace, model"
QUANTILES = (("50", "0.5"), ("95", "0.95"), ("99", "0.99"))
ERROR_WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
#: Multi-window, multi-burn-rate alerts (the SRE workbook's): (long window, short window, rate, severity).
BURN_RATES = (
    ("1h", "5m", 14.4, "page"),
    ("6h", "30m", 6, "page"),
    ("1d", "2h", 3, "ticket"),
    ("3d", "6h", 1, "ticket"),
)
SUNSET_NOTICE_SECONDS = 90 * 86400


QUALITY_SHARES = {
    "regenerations": "envoy_tollway_regenerations",
    "content_filtered": "envoy_tollway_content_filtered",
}
"""The gateway's per-version quality counters that are read as a share of the version's requests."""


def quality_rules(matchers: str) -> list[dict[str, str]]:
    """What consumers make of each version, from the gateway's counters (every replica's summed), so that a
    new version can be set beside the one it replaces: the ratings (POST /v1/feedback) per day by rating,
    the share of 4 and 5 of 5 among them, the share of requests that were regenerations of the one before
    or whose answer was filtered (over Triton's requests of that version), and the prompts each tier's prompt
    checks matched per hour."""
    feedback = f"increase(envoy_tollway_feedback{{{matchers}}}[1d])"
    positive = f'increase(envoy_tollway_feedback{{{matchers},rating=~"4|5"}}[1d])'
    rules = [
        {"record": "tollway:feedback:increase1d", "expr": f"sum by ({BY_VERSION}, rating) ({feedback})"},
        {
            "record": "tollway:feedback_positive:ratio1d",
            "expr": f"(sum by ({BY_VERSION}) ({positive}) or sum by ({BY_VERSION}) ({feedback}) * 0) "
            f"/ sum by ({BY_VERSION}) ({feedback})",
        },
    ]
    _, requests = _errors_and_total(matchers, "1h", BY_VERSION)
    rules += [
        {
            "record": f"tollway:{name}:ratio1h",
            "expr": f"{_rate(metric, matchers, '1h', BY_VERSION)} / {requests}",
        }
        for name, metric in QUALITY_SHARES.items()
    ]
    matched = f"increase(envoy_tollway_prompt_matches{{{matchers}}}[1h])"
    rules.append(
        {
            "record": "tollway:prompt_matches:increase1h",
            "expr": f"sum by ({BY_VERSION}, tier, pattern) ({matched})",
        }
    )
    return rules


def selector(namespace: str, model: str) -> str:
    return f'namespace="{namespace}",model="{model}"'


def _rate(metric: str, matchers: str, window: str, by: str) -> str:
    return f"sum by ({by}) (rate({metric}{{{matchers}}}[{window}]))"


def _errors_and_total(matchers: str, window: str, by: str) -> tuple[str, str]:
    """Failed requests/s and all requests/s; failures count 0 before Triton has reported any."""
    success = _rate("nv_inference_request_success", matchers, window, by)
    failure = f"({_rate('nv_inference_request_failure', matchers, window, by)} or {success} * 0)"
    return failure, f"({success} + {failure})"


#: Triton publishes no end-to-end latency summary for a model with the response cache on (its metrics docs say
#: so: cache upkeep would skew it); the stages it does summarise, which add up to a cache miss's time.
CACHED_MODEL_STAGES = (
    "nv_inference_queue_summary_us",
    "nv_cache_miss_summary_per_model",
    "nv_inference_compute_input_summary_us",
    "nv_inference_compute_infer_summary_us",
    "nv_inference_compute_output_summary_us",
)


def request_latency_ms(matchers: str, quantile: str, by: str) -> str:
    """A latency quantile in ms from Triton's request summary, the slowest replica's (summaries do not add
    up across pods)."""
    summary = f'nv_inference_request_summary_us{{{matchers},quantile="{quantile}"}}'
    return f"max by ({by}) ({summary}) / 1000"


def cached_latency_ms(matchers: str, quantile: str, by: str) -> str:
    """The same for a model with the response cache on: the sum of the stages' quantiles (of those Triton
    reports), the slowest replica's each; an estimate for a cache miss (hits are faster), so that P99
    targets and latency alerts still see the model."""
    stages = f'{{__name__=~"{"|".join(CACHED_MODEL_STAGES)}",{matchers},quantile="{quantile}"}}'
    return f"sum by ({by}) (max by ({by}, __name__) ({stages})) / 1000"


def recording_rules(namespace: str, model: str, cached: bool) -> list[dict[str, str]]:
    matchers = selector(namespace, model)
    latency = cached_latency_ms if cached else request_latency_ms
    rules = [
        {"record": f"tollway:request_latency_ms:p{label}", "expr": latency(matchers, quantile, BY_VERSION)}
        for label, quantile in QUANTILES
    ]
    rules += [
        {
            "record": f"tollway:time_to_first_response_ms:p{label}",
            "expr": f"histogram_quantile({quantile}, sum by ({BY_VERSION}, le) "
            f"(rate(nv_inference_first_response_histogram_ms_bucket{{{matchers}}}[5m])))",
        }
        for label, quantile in (("50", "0.5"), ("99", "0.99"))
    ]
    rules += stream_time_rules(matchers)
    rules += quality_rules(matchers)
    failures, total = _errors_and_total(matchers, "1m", BY_VERSION)
    rules += [
        {
            "record": "tollway:queue_depth",
            "expr": f"sum by ({BY_MODEL}) (nv_inference_pending_request_count{{{matchers}}})",
        },
        {"record": "tollway:requests:rate1m", "expr": total},
        {
            "record": "tollway:completions:rate1m",
            "expr": _rate("nv_inference_request_success", matchers, "1m", BY_MODEL),
        },
        {
            # Expected wait of a new request: the queue ahead of it over the rate Triton finishes requests.
            "record": "tollway:estimated_wait_seconds",
            "expr": f"tollway:queue_depth{{{matchers}}} "
            f"/ clamp_min(tollway:completions:rate1m{{{matchers}}}, 0.01)",
        },
    ]
    for window in ERROR_WINDOWS:
        failures, total = _errors_and_total(matchers, window, BY_MODEL)
        rules.append({"record": f"tollway:error_ratio:rate{window}", "expr": f"{failures} / {total}"})
    return rules


def stream_time_rules(matchers: str) -> list[dict[str, str]]:
    """Streamed answers' time to the first token and per output token after it, as the gateway measures
    them (its histograms envoy_tollway_stream_{ttft,tpot}_ms, every replica's summed): P50/P95/P99 per
    version, and per version and tier. `tollway:ttft_ms:p99` is what the TTFT objective watches: the
    gateway's where it has measured streams, else Triton's own first-response histogram."""
    rules = []
    for name, metric in (("ttft", "envoy_tollway_stream_ttft_ms"), ("tpot", "envoy_tollway_stream_tpot_ms")):
        for by, suffix in ((BY_VERSION, ""), (f"{BY_VERSION}, tier", "_by_tier")):
            rules += [
                {
                    "record": f"tollway:stream_{name}_ms{suffix}:p{label}",
                    "expr": f"histogram_quantile({quantile}, sum by ({by}, le) "
                    f"(rate({metric}_bucket{{{matchers}}}[5m])))",
                }
                for label, quantile in QUANTILES
            ]
    rules.append(
        {
            "record": "tollway:ttft_ms:p99",
            "expr": f"tollway:stream_ttft_ms:p99{{{matchers}}} "
            f"or tollway:time_to_first_response_ms:p99{{{matchers}}}",
        }
    )
    return rules


def _number(value: Decimal | float) -> str:
    return format(Decimal(str(value)).normalize(), "f")


def alerting_rules(namespace: str, model: str, objectives: Objectives) -> list[dict[str, Any]]:
    matchers = selector(namespace, model)
    budget = 1 - Decimal(objectives.availability) / 100
    labels = {"namespace": namespace, "model": model}
    alerts: list[dict[str, Any]] = []
    latency_objectives = [
        ("tollway:request_latency_ms:p99", objectives.p99_latency_ms, "TollwayLatencySLOBurn", "latency")
    ]
    if objectives.ttft_p99_ms is not None:
        latency_objectives.append(
            ("tollway:ttft_ms:p99", objectives.ttft_p99_ms, "TollwayTTFTSLOBurn", "time to first token")
        )
    for long, short, rate, severity in BURN_RATES:
        threshold = _number(budget * Decimal(str(rate)))
        alerts.append(
            burn_alert(
                "TollwayAvailabilityBudgetBurn",
                _per_window("tollway:error_ratio", matchers),
                threshold,
                (long, short, severity),
                labels=labels,
                annotations={
                    "summary": f"{model} burns its {objectives.availability}% availability budget "
                    f"{rate}x too fast",
                    "description": f"Error ratio over {long} and {short} above {threshold} "
                    f"({rate} x the {objectives.window_days}-day budget).",
                },
            )
        )
        for recorded, target, name, what in latency_objectives:
            alerts.append(
                _slow_burn(
                    recorded,
                    target,
                    alert=name,
                    what=what,
                    model=model,
                    labels=labels,
                    window=(long, short, severity),
                )
            )
    alerts.append(
        {
            "alert": "TollwayErrorSpike",
            "expr": f"tollway:error_ratio:rate5m{{{matchers}}} > 0.05 "
            f"and tollway:error_ratio:rate5m{{{matchers}}} "
            f"> 5 * (tollway:error_ratio:rate1h{{{matchers}}} offset 5m)",
            "for": "2m",
            "labels": {**labels, "severity": "page"},
            "annotations": {"summary": f"{model}: errors jumped above 5% and 5x the last hour's ratio"},
        }
    )
    for sunset in objectives.sunsets:
        version_matchers = f'{matchers},version="{sunset.version}"'
        alerts.append(
            {
                "alert": "TollwaySunsetVersionInUse",
                "expr": f"{_rate('nv_inference_request_success', version_matchers, '1h', BY_VERSION)} > 0 "
                f"and on() (vector(time()) > {sunset.at - SUNSET_NOTICE_SECONDS})",
                "for": "1h",
                "labels": {**labels, "version": str(sunset.version), "severity": "ticket"},
                "annotations": {
                    "summary": f"{model} version {sunset.version} still serves traffic within 90 days of its "
                    "sunset",
                },
            }
        )
    return alerts


def _slow_burn(
    recorded: str,
    target: int,
    *,
    alert: str,
    what: str,
    model: str,
    labels: dict[str, str],
    window: tuple[str, ...],
) -> dict[str, Any]:
    """A latency objective's burn alert: the model's `recorded` P99 (ms) above `target` over both of the burn
    rate's windows (long, short, severity)."""
    long, short, severity = window
    matchers = f'namespace="{labels["namespace"]}",model="{model}"'
    averaged = f"avg_over_time({recorded}{{{matchers}}}"
    return burn_alert(
        alert,
        lambda span: f"max by ({BY_MODEL}) ({averaged}[{span}]))",
        str(target),
        (long, short, severity),
        labels=labels,
        annotations={
            "summary": f"{model} P99 {what} above its {target} ms objective over {long} and {short}"
        },
    )


def _per_window(ratio: str, matchers: str) -> Callable[[str], str]:
    """A ratio recorded per window (`ratio`:rate<window>), as a function of the window."""
    return lambda window: f"{ratio}:rate{window}{{{matchers}}}"


def burn_alert(
    alert: str,
    over: Callable[[str], str],
    threshold: str,
    window: tuple[str, str, str],
    *,
    labels: dict[str, str],
    annotations: dict[str, str],
) -> dict[str, Any]:
    """A burn-rate alert: the figure `over` a window above `threshold` over both the long and the short
    window of (long, short, severity); a page waits 2 minutes, a ticket 15."""
    long, short, severity = window
    return {
        "alert": alert,
        "expr": f"{over(long)} > {threshold} and {over(short)} > {threshold}",
        "for": "2m" if severity == "page" else "15m",
        "labels": {**labels, "severity": severity, "window": long},
        "annotations": annotations,
    }


def rule_groups(serving: TritonServing) -> list[dict[str, Any]]:
    """The model's rules as Prometheus rule groups (what a PrometheusRule's spec.groups holds)."""
    namespace, model = serving.namespace, serving.model.name
    groups: list[dict[str, Any]] = [
        {
            "name": f"tollway.{namespace}.{serving.name}.recording",
            "rules": recording_rules(namespace, model, serving.model.response_cache),
        }
    ]
    if serving.objectives is not None:
        groups.append(
            {
                "name": f"tollway.{namespace}.{serving.name}.alerts",
                "rules": alerting_rules(namespace, model, serving.objectives),
            }
        )
    if serving.cost is not None:  # every minute: the report adds up the per-minute replica-hours
        groups.append(
            {
                "name": f"tollway.{namespace}.{serving.name}.cost",
                "interval": "1m",
                "rules": cost_rules(namespace, model, serving.cost),
            }
        )
    return groups


def _model_tokens(matchers: str, window: str, by: str, kind: str = "") -> tuple[str, str]:
    """The input and output tokens the gateway counted for a model over `window`, its replicas summed
    (`kind` "cached_": of the answers from its answer cache). A model may report only one of the two (an
    embedding: no output): the missing side is 0."""
    used_in, used_out = (
        f"sum by ({by}) (increase({usage_metric(f'model_{kind}{side}_tokens')}{{{matchers}}}[{window}]))"
        for side in ("input", "output")
    )
    return f"({used_in} or {used_out} * 0)", f"({used_out} or {used_in} * 0)"


def _revenue(tier: Tier, used: tuple[str, str], cached: tuple[str, ...]) -> str:
    """What a tier's consumers are billed, per 1k tokens, for `used` (input, output) tokens of which
    `cached` (input, output) came from an answer cache: those at the tier's cached price when it has one."""
    (used_in, used_out), (cached_in, cached_out) = used, cached
    billed = f"{used_in} * {tier.input_price_per_1k} + {used_out} * {tier.output_price_per_1k}"
    if tier.cached_price_per_1k is None:
        return billed
    return (
        f"{billed} - {cached_in} * {tier.input_price_per_1k} - {cached_out} * {tier.output_price_per_1k}"
        f" + ({cached_in} + {cached_out}) * {tier.cached_price_per_1k}"
    )


#: The windows the cost per 1k tokens is recorded over: the last hour (status, dashboard) and the last day
#: (the tiers' margins), with their seconds.
COST_WINDOWS = (("1h", 3600), ("1d", 86400))
COST_PER_1K = ("tollway:model_cost_per_1k_input_tokens", "tollway:model_cost_per_1k_output_tokens")


def cost_rules(namespace: str, model: str, cost: ServingCost) -> list[dict[str, Any]]:
    """What serving the model costs: its replicas (its distinct Triton scrape targets: each exports a series
    per version), their cost per hour, replica-hours per minute (from Triton's series alone, so that `promtool
    tsdb create-blocks-from rules` can backfill them for `tollway cost-report`), and the cost per 1k input and
    output tokens over each window: the average cost per second over the tokens per second, an output token
    weighing `output_token_weight` input tokens. Without tokens in a window there is no cost per token."""
    matchers = selector(namespace, model)
    pods = f"count by ({BY_MODEL}, instance) (nv_inference_request_success{{{matchers}}})"
    replicas = f"count by ({BY_MODEL}) ({pods})"
    price, labels = cost.replica_hour_price, {"currency": cost.currency}
    rules: list[dict[str, Any]] = [
        {"record": "tollway:model_replicas", "expr": replicas},
        {"record": "tollway:model_cost_per_hour", "expr": f"{replicas} * {price}", "labels": labels},
        {"record": "tollway:model_replica_hours:increase1m", "expr": f"{replicas} / 60"},
    ]
    weight = cost.output_token_weight
    for window, seconds in COST_WINDOWS:
        used_in, used_out = _model_tokens(matchers, window, BY_MODEL)
        per_second = f"avg_over_time(tollway:model_cost_per_hour{{{matchers}}}[{window}]) / 3600"
        weighted = f"({used_in} + {weight} * {used_out}) / {seconds}"
        per_input, per_output = (f"{name}:{window}" for name in COST_PER_1K)
        rules += [
            {
                "record": per_input,
                "expr": f"1000 * {per_second} / ignoring (currency) ({weighted} > 0)",
                "labels": labels,  # a one-to-one match drops the label it ignores
            },
            {"record": per_output, "expr": f"{weight} * {per_input}{{{matchers}}}"},
        ]
    return rules


def margin_rules(namespace: str, tier: Tier) -> list[dict[str, Any]]:
    """A tier's margin on each model it may call whose cost is in its currency, over the last day: its
    revenue (its tokens on the model at its prices) less its share of the serving cost (its tokens at the
    model's cost per 1k over the day); and an alert when the revenue is below the cost. A day without the
    tier's traffic has no margin to miss."""
    rules: list[dict[str, Any]] = []
    for model in tier.margin_models:
        matchers = f'namespace="{namespace}",tier="{tier.name}",model="{model}"'
        used_in, used_out = _model_tokens(matchers, "1d", "namespace, tier, model")
        scope = f'{selector(namespace, model)},currency="{tier.currency}"'
        spent = " + ".join(
            f"{used} * on (namespace, model) group_left () {per_1k}:1d{{{scope}}}"
            for used, per_1k in zip((used_in, used_out), COST_PER_1K, strict=True)
        )
        cached = _model_tokens(matchers, "1d", "namespace, tier, model", "cached_")
        revenue = _revenue(tier, (used_in, used_out), tuple(f"({side} or {used_in} * 0)" for side in cached))
        labels = {"currency": tier.currency, "tier": tier.name, "model": model}  # distinct static labels
        margin = f"tollway:tier_model_revenue:1d{{{matchers}}} - tollway:tier_model_cost:1d{{{matchers}}}"
        rules += [
            {"record": "tollway:tier_model_revenue:1d", "expr": f"({revenue}) / 1000", "labels": labels},
            {"record": "tollway:tier_model_cost:1d", "expr": f"({spent}) / 1000", "labels": labels},
            {"record": "tollway:tier_model_margin:1d", "expr": margin, "labels": labels},
            {
                "alert": "TollwayTierBelowCost",
                "expr": f"tollway:tier_model_margin:1d{{{matchers}}} < 0",
                "for": "30m",
                "labels": {"namespace": namespace, "tier": tier.name, "model": model, "severity": "ticket"},
                "annotations": {
                    "summary": f"tier {tier.name} sold {model} below its serving cost over the last day",
                },
            },
        ]
    return rules


def scrape_annotations(port: int, path: str) -> dict[str, str]:
    """The fallback for a Prometheus without prometheus-operator: the usual pod annotations."""
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": path}


def service_monitor(
    metadata: dict[str, Any], selector_labels: dict[str, str], path: str = "/metrics"
) -> Manifest:
    return {
        "apiVersion": MONITORING_API,
        "kind": "ServiceMonitor",
        "metadata": metadata,
        "spec": {
            "selector": {"matchLabels": selector_labels},
            "endpoints": [{"port": "metrics", "interval": "15s", "path": path}],
        },
    }


def _by_consumer(kind: str, namespace: str, window: str, function: str = "rate") -> str:
    """A usage counter of the gateway (`kind`: usage_requests, _input, _output or _unreported) summed over
    the Envoy replicas, per tier and consumer."""
    series = f'{usage_metric(kind)}{{namespace="{namespace}"}}'
    return f"sum by (namespace, tier, consumer) ({function}({series}[{window}]))"


def cache_rules(namespace: str) -> list[dict[str, str]]:
    """The answer caches' hit ratio over the answers they looked up (hits and misses: not the requests that
    sample, nor a tier's that opted out), per model and tier, and per model."""
    series = usage_metric("cache_answers")
    rules = []
    for record, by in (
        ("cache_hit_ratio", "namespace, model, tier"),
        ("model_cache_hit_ratio", "namespace, model"),
    ):
        hits = _rate(series, f'namespace="{namespace}",cache="hit"', "5m", by)
        looked_up = _rate(series, f'namespace="{namespace}",cache=~"hit|miss"', "5m", by)
        rules.append({"record": f"tollway:{record}:rate5m", "expr": f"{hits} / {looked_up}"})
    return rules


def usage_rules(gateway: Gateway) -> list[dict[str, Any]]:
    """Requests, tokens and cost per consumer (the gateway's usage counters), and usage-spike alerts."""
    namespace = gateway.namespace
    rules: list[dict[str, Any]] = [
        {
            "record": "tollway:consumer_requests:rate5m",
            "expr": _by_consumer("usage_requests", namespace, "5m"),
        },
    ]
    for direction in ("input", "output"):
        per_minute = f"{_by_consumer(f'usage_{direction}', namespace, '5m')} * 60"
        rules.append({"record": f"tollway:consumer_{direction}_tokens:per_minute", "expr": per_minute})
        for kind in ("", "cached_"):
            per_day = _by_consumer(f"usage_{kind}{direction}", namespace, "1d", "increase")
            rules.append({"record": f"tollway:consumer_{kind}{direction}_tokens:per_day", "expr": per_day})
    rules.append(
        {
            "record": "tollway:consumer_requests:per_day",
            "expr": _by_consumer("usage_requests", namespace, "1d", "increase"),
        }
    )
    for tier in gateway.tiers:
        matchers = f'namespace="{namespace}",tier="{tier.name}"'
        # A model may report only one of the two counts (an embedding: no output): the missing side is 0.
        used_in = f"tollway:consumer_input_tokens:per_day{{{matchers}}}"
        used_out = f"tollway:consumer_output_tokens:per_day{{{matchers}}}"
        used = f"({used_in} or {used_out} * 0)", f"({used_out} or {used_in} * 0)"
        cached = tuple(
            f"(tollway:consumer_cached_{side}_tokens:per_day{{{matchers}}} or {used[0]} * 0)"
            for side in ("input", "output")
        )
        cost = f"({_revenue(tier, used, cached)}) / 1000"
        # one rule per tier: distinct static labels
        labels = {"currency": tier.currency, "tier": tier.name}
        rules.append({"record": "tollway:consumer_cost:per_day", "expr": cost, "labels": labels})
    scope = f'namespace="{namespace}"'
    rules.append(
        {
            "record": "tollway:consumer_cost_per_request:per_day",
            "expr": f"tollway:consumer_cost:per_day{{{scope}}} "
            f"/ ignoring(currency) clamp_min(tollway:consumer_requests:per_day{{{scope}}}, 1)",
        }
    )
    rules += cache_rules(namespace)
    unreported = _by_consumer("usage_unreported", namespace, "15m", "increase")
    rules.append(
        {
            # Usage is compulsory: a model (or a request that left the usage output out) that reports no
            # tokens is charged each request's estimate; someone should find out why.
            "alert": "TollwayUsageUnreported",
            "expr": f"{unreported} > 0",
            "labels": {"namespace": namespace, "severity": "ticket"},
            "annotations": {
                "summary": "served responses reported no token usage: each was charged its request's estimate"
            },
        }
    )
    hourly_in, hourly_out = (
        _by_consumer(f"usage_{direction}", namespace, "1h") for direction in ("input", "output")
    )
    hourly = (
        f"({hourly_in} + {hourly_out}) or {hourly_in} or {hourly_out}"  # both counts, either may be missing
    )
    rules.append({"record": "tollway:consumer_tokens:rate1h", "expr": hourly})
    for tier in gateway.tiers:
        factor = _number(tier.usage_spike_factor)
        recent = f'tollway:consumer_tokens:rate1h{{namespace="{namespace}",tier="{tier.name}"}}'
        rules.append(
            {
                # The baseline is the average of the hourly rate over what Prometheus has of the last 7 days,
                # so a new consumer is compared with its own short history, not with an empty week.
                "alert": "TollwayConsumerUsageSpike",
                "expr": f"{recent} > {factor} * avg_over_time({recent}[7d])",
                "for": "15m",
                "labels": {"namespace": namespace, "tier": tier.name, "severity": "ticket"},
                "annotations": {
                    "summary": f"a consumer of tier {tier.name} uses tokens at over {factor}x its 7-day rate",
                },
            }
        )
        rules += automation_alerts(namespace, tier)
    if any(tier.key_signals for tier in gateway.tiers):
        rules += key_signal_rules(gateway)
    return rules


#: The ratelimit service's counter of first sightings (see render.ratelimit._key_signals).
SIGHTINGS = "ratelimit_service_rate_limit_within_limit"


def key_signal_rules(gateway: Gateway) -> list[dict[str, Any]]:
    """Per consumer, the distinct client networks, networks new to its key this month, and user agents in
    the last hour (the ratelimit service counts first sightings per clock hour, so a value seen on both
    sides of an hour's turn counts twice), and per tier the alert that a key's pattern changed abruptly."""
    namespace = gateway.namespace
    counted = [(signal, "consumer") for signal in KEY_SIGNALS] + [(NEW_KEYS_SIGNAL, "network")]
    rules: list[dict[str, Any]] = [
        {
            "record": f"tollway:{by}_{signal}:increase1h",
            "expr": f"sum by (namespace, tier, {by}) ({_sightings(namespace, signal, by)})",
        }
        for signal, by in counted
    ]
    for tier in gateway.tiers:
        if tier.key_signals is not None:
            rules.append(key_alert(namespace, tier.name, tier.key_signals))
            rules.append(new_keys_alert(namespace, tier.name, tier.key_signals))
    return rules


def new_keys_alert(namespace: str, tier: str, signals: KeySignals) -> dict[str, Any]:
    """More keys created in the last day first used from one network within an hour than the tier allows."""
    scope = f'namespace="{namespace}",tier="{tier}"'
    return {
        "alert": "TollwayNewKeysFromOneNetwork",
        "expr": f"tollway:network_new_keys:increase1h{{{scope}}} > {signals.new_keys_per_network}",
        "for": "5m",
        "labels": {"namespace": namespace, "tier": tier, "severity": "ticket"},
        "annotations": {
            "summary": f"over {signals.new_keys_per_network} new keys of tier {tier} were first used from "
            "network {{ $labels.network }} within an hour: a farm of sign-ups?",
        },
    }


def _sightings(namespace: str, signal: str, by: str) -> str:
    """A signal's first sightings in the last hour, labelled with the tier (from key1, `SIGNAL_<tier>`) and
    with what key2 names (`<by>_<value>`: the consumer, or for new keys the network)."""
    series = f'{SIGHTINGS}{{namespace="{namespace}",key1=~"{signal}_.+"}}'
    with_tier = label_replace(f"increase({series}[1h])", "tier", f"{signal}_(.+)", "key1")
    return label_replace(with_tier, by, f"{by}_(.+)", "key2")


def label_replace(expression: str, label: str, pattern: str, source: str) -> str:
    return f'label_replace({expression}, "{label}", "$1", "{source}", "{pattern}")'


def key_alert(namespace: str, tier: str, signals: KeySignals) -> dict[str, Any]:
    """A key used from more networks (most of them new to it) or by more user agents than the floor and
    `change_factor` times its hourly average of the week before this hour; a key with no such week is held
    to the floor alone."""
    scope = f'namespace="{namespace}",tier="{tier}"'
    factor = _number(signals.change_factor)

    def jumped(signal: str, floor: int) -> str:
        recent = f"tollway:consumer_{signal}:increase1h{{{scope}}}"
        before = f"avg_over_time({recent}[7d] offset 1h)"
        return f"({recent} > {floor} and ({recent} > {factor} * {before} or {recent} unless {before}))"

    networks = f"tollway:consumer_networks:increase1h{{{scope}}}"
    new = f"tollway:consumer_new_networks:increase1h{{{scope}}}"
    share = _number(signals.new_network_share)
    expression = (
        f"({jumped('networks', signals.networks_per_hour)} and {new} >= {share} * {networks}) "
        f"or {jumped('agents', signals.agents_per_hour)}"
    )
    return {
        "alert": KEY_ALERT,
        "expr": expression,
        "for": "5m",
        "labels": {"namespace": namespace, "tier": tier, "severity": "page"},
        "annotations": {
            "summary": f"the key of consumer {{{{ $labels.consumer }}}} (tier {tier}) is used from far more "
            "networks or programs than it was: stolen?",
        },
    }


def automation_alerts(namespace: str, tier: Tier) -> list[dict[str, Any]]:
    """The patterns of scraping and automation among a tier's consumers, at the thresholds of its
    spec.alerts: running just under the tier's requests or tokens per minute for hours on end, and sending
    the same prompts again and again (the gateway's regenerations, counted per consumer)."""
    scope = f'namespace="{namespace}",tier="{tier.name}"'
    labels = {"namespace": namespace, "tier": tier.name, "severity": "ticket"}
    own = {limit.kind: limit.value for limit in tier.limits}
    ratio = _number(tier.near_limit_ratio)
    near = [
        f"tollway:consumer_requests:rate5m{{{scope}}} * 60 > {ratio} * {own['rpm']}" if "rpm" in own else "",
        f"tollway:consumer_tokens:rate1h{{{scope}}} * 60 > {ratio} * {own['tpm']}" if "tpm" in own else "",
    ]
    rules = []
    if any(near):
        rules.append(
            {
                "alert": "TollwayConsumerNearLimit",
                "expr": " or ".join(f"({expression})" for expression in near if expression),
                "for": f"{tier.near_limit_hours}h",
                "labels": labels,
                "annotations": {
                    "summary": f"a consumer of tier {tier.name} has run at over {tier.near_limit_ratio:.0%} "
                    f"of the tier's limit for {tier.near_limit_hours} h: a scraper pacing itself?",
                },
            }
        )
    repeats, requests = (
        f"sum by (namespace, tier, consumer) (increase({metric}{{{scope}}}[1h]))"
        for metric in ("envoy_tollway_consumer_repeats", usage_metric("usage_requests"))
    )
    share = _number(tier.repeated_prompt_ratio)
    rules.append(
        {
            "alert": "TollwayConsumerRepeatsPrompts",
            "expr": f"({repeats} / {requests} > {share}) "
            f"and ({requests} >= {tier.repeated_prompt_min_requests})",
            "for": "15m",
            "labels": labels,
            "annotations": {
                "summary": f"over {tier.repeated_prompt_ratio:.0%} of a consumer's requests to tier "
                f"{tier.name} in the last hour repeated a prompt it had just sent: automation?",
            },
        }
    )
    return rules


#: The SLA's rolling windows: the burn rates' and the 30 days of the budget (the calendar month itself is
#: computed by the status and `tollway sla-report` from the per-minute series, which PromQL cannot range over
#: from the month's start).
SLA_WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d", "30d")
SLA_COUNTS = (("requests", "envoy_tollway_sla_requests"), ("errors", "envoy_tollway_sla_errors"))


def maintenance_expression(sla: Sla) -> str:
    """1 while a maintenance window is open, else 0, asked of the middle of the minute that ends at the
    evaluation (`time() - 30`), so each per-minute increase is excluded or kept whole."""
    moment = "vector(time() - 30)"
    minute_of_week = f"(day_of_week({moment}) * 1440 + hour({moment}) * 60 + minute({moment}))"
    windows = [
        f"(({minute_of_week} - {window.start_minute} + {MINUTES_PER_WEEK}) % {MINUTES_PER_WEEK} "
        f"< bool {window.minutes})"
        for window in sla.weekly
    ]
    windows += [
        f"vector((time() - 30 >= bool {window.start}) * (time() - 30 < bool {window.end}))"
        for window in sla.one_off
    ]
    return f"clamp_max({' + '.join(windows)}, 1)" if windows else "vector(0)"


def _over(recorded: str, scope: str, window: str) -> str:
    return f"sum by (namespace, tier) (sum_over_time({recorded}{{{scope}}}[{window}]))"


def sla_rules(namespace: str, tier: Tier, sla: Sla) -> list[dict[str, Any]]:
    """A tier's SLA as the gateway measures it: per minute, the counted requests, their errors and (with a
    latency objective) those answered within its threshold, outside maintenance; their ratios over the
    rolling windows; the 30-day error budget left; and burn-rate alerts on both objectives."""
    scope = f'namespace="{namespace}",tier="{tier.name}"'
    labels = {"namespace": namespace, "tier": tier.name}
    # The window is asked again rather than read from tollway:tier_in_maintenance, so each per-minute rule
    # stands alone: `promtool tsdb create-blocks-from rules` cannot backfill rules that read other rules.
    outside = f" unless on () ({maintenance_expression(sla)} == 1)" if sla.weekly or sla.one_off else ""
    rules: list[dict[str, Any]] = [
        {"record": "tollway:tier_in_maintenance", "expr": maintenance_expression(sla), "labels": labels}
    ]
    rules += [
        {
            "record": f"tollway:tier_sla_{count}:increase1m",
            "expr": f"sum by (namespace, tier, consumer) (increase({metric}{{{scope}}}[1m])){outside}",
        }
        for count, metric in SLA_COUNTS
    ]
    requests, errors = (f"tollway:tier_sla_{count}:increase1m" for count, _ in SLA_COUNTS)
    objectives = [("error", Decimal(sla.availability), "TollwayTierSlaBudgetBurn", "availability")]
    for window in SLA_WINDOWS:
        failed = f"({_over(errors, scope, window)} or {_over(requests, scope, window)} * 0)"
        rules.append(
            {
                "record": f"tollway:tier_sla_error_ratio:rate{window}",
                "expr": f"{failed} / {_over(requests, scope, window)}",
            }
        )
    if sla.latency_ms is not None:
        bucket = f'envoy_tollway_sla_latency_ms_bucket{{{scope},le="{sla.latency_ms}"}}'
        latency = [("within", bucket), ("measured", f"envoy_tollway_sla_latency_ms_count{{{scope}}}")]
        rules += [
            {
                "record": f"tollway:tier_sla_latency_{count}:increase1m",
                "expr": f"sum by (namespace, tier) (increase({series}[1m])){outside}",
            }
            for count, series in latency
        ]
        for window in SLA_WINDOWS:
            within, measured = (
                f"sum_over_time(tollway:tier_sla_latency_{count}:increase1m{{{scope}}}[{window}])"
                for count in ("within", "measured")
            )
            rules.append(
                {
                    "record": f"tollway:tier_sla_latency_miss_ratio:rate{window}",
                    "expr": f"1 - {within} / {measured}",
                }
            )
        objectives.append(
            (
                "latency_miss",
                Decimal(sla.latency_percent),
                "TollwayTierSlaLatencyBurn",
                f"latency ({sla.latency_ms} ms)",
            )
        )
    budget = 1 - Decimal(sla.availability) / 100
    rules.append(
        {
            "record": "tollway:tier_sla_error_budget_remaining:30d",
            "expr": f"1 - tollway:tier_sla_error_ratio:rate30d{{{scope}}} / {_number(budget)}"
            if budget
            else f"1 - (tollway:tier_sla_error_ratio:rate30d{{{scope}}} > bool 0)",
        }
    )
    for ratio, target, alert, what in objectives:
        allowed = 1 - target / 100
        for long, short, rate, severity in BURN_RATES:
            threshold = _number(allowed * Decimal(str(rate)))
            rules.append(
                burn_alert(
                    alert,
                    _per_window(f"tollway:tier_sla_{ratio}_ratio", scope),
                    threshold,
                    (long, short, severity),
                    labels=labels,
                    annotations={
                        "summary": f"tier {tier.name} burns its SLA's {what} budget ({_number(target)} %) "
                        f"{rate}x too fast"
                    },
                )
            )
    rules.append(
        {
            "alert": "TollwayTierSlaBudgetLow",
            "expr": f"tollway:tier_sla_error_budget_remaining:30d{{{scope}}} < 0.25",
            "for": "15m",
            "labels": {**labels, "severity": "ticket"},
            "annotations": {
                "summary": f"tier {tier.name} has less than 25 % of its 30-day error budget left"
            },
        }
    )
    return rules


def gateway_rule_groups(gateway: Gateway) -> list[dict[str, Any]]:
    """The gateway's rules: from Envoy's own statistics, replies by class (2xx-5xx, the gateway's own 401,
    403, 429 included), the share of 4xx and of 5xx and an alert when 5xx passes 5 %; and the usage rules."""
    namespace = gateway.namespace
    matchers = f'namespace="{namespace}",envoy_http_conn_manager_prefix="gateway"'
    replies = "envoy_http_downstream_rq_xx"
    by_class = f"sum by (namespace, envoy_response_code_class) (rate({replies}{{{matchers}}}[5m]))"
    total = f"sum by (namespace) (rate({replies}{{{matchers}}}[5m]))"
    rules: list[dict[str, Any]] = [{"record": "tollway:gateway_replies:rate5m", "expr": by_class}]
    for code_class in ("4", "5"):
        share = (
            f'sum by (namespace) (rate({replies}{{{matchers},envoy_response_code_class="{code_class}"}}[5m]))'
        )
        rules.append({"record": f"tollway:gateway_{code_class}xx_ratio:rate5m", "expr": f"{share} / {total}"})
    rules.append(
        {
            "alert": "TollwayGatewayErrors",
            "expr": f'tollway:gateway_5xx_ratio:rate5m{{namespace="{namespace}"}} > 0.05',
            "for": "5m",
            "labels": {"namespace": namespace, "severity": "page"},
            "annotations": {
                "summary": f"the gateway of {namespace} answers more than 5 % of requests with 5xx"
            },
        }
    )
    groups = [
        {"name": f"tollway.{namespace}.gateway", "rules": rules},
        {"name": f"tollway.{namespace}.usage", "rules": usage_rules(gateway)},
        {
            "name": f"tollway.{namespace}.margins",
            "rules": [rule for tier in gateway.tiers for rule in margin_rules(namespace, tier)],
        },
    ]
    # Each tier's own group, evaluated every minute: the per-minute series are what the month adds up.
    return groups + [
        {
            "name": f"tollway.{namespace}.sla.{tier.name}",
            "interval": "1m",
            "rules": sla_rules(namespace, tier, tier.sla),
        }
        for tier in gateway.tiers
        if tier.sla is not None
    ]


def prometheus_rule(serving: TritonServing, metadata: dict[str, Any]) -> Manifest:
    return {
        "apiVersion": MONITORING_API,
        "kind": "PrometheusRule",
        "metadata": metadata,
        "spec": {"groups": rule_groups(serving)},
    }


def _panel(index: int, title: str, unit: str, targets: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "id": index + 1,
        "type": "timeseries",
        "title": title,
        "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"expr": expr, "legendFormat": legend, "refId": chr(65 + n)}
            for n, (expr, legend) in enumerate(targets)
        ],
    }


def dashboard(serving: TritonServing, metadata: dict[str, Any]) -> Manifest:
    matchers = selector(serving.namespace, serving.model.name)
    panels = [
        (
            "Request latency",
            "ms",
            [
                (f"tollway:request_latency_ms:p{q}{{{matchers}}}", f"P{q} v{{{{version}}}}")
                for q in ("50", "95", "99")
            ],
        ),
        (
            "Time to first response",
            "ms",
            [(f"tollway:time_to_first_response_ms:p{q}{{{matchers}}}", f"P{q}") for q in ("50", "99")],
        ),
        ("Requests per second", "reqps", [(f"tollway:requests:rate1m{{{matchers}}}", "v{{version}}")]),
        (
            "Error ratio",
            "percentunit",
            [
                (f"tollway:error_ratio:rate5m{{{matchers}}}", "5m"),
                (f"tollway:error_ratio:rate1h{{{matchers}}}", "1h"),
            ],
        ),
        ("Queue depth", "short", [(f"tollway:queue_depth{{{matchers}}}", "waiting")]),
        ("Estimated wait", "s", [(f"tollway:estimated_wait_seconds{{{matchers}}}", "wait")]),
        # Quality, by version: a new one beside the one it replaces
        (
            "Ratings of 4-5 (feedback, 1 day)",
            "percentunit",
            [(f"tollway:feedback_positive:ratio1d{{{matchers}}}", "v{{version}}")],
        ),
        (
            "Ratings per day",
            "short",
            [(f"tollway:feedback:increase1d{{{matchers}}}", "v{{version}} rated {{rating}}")],
        ),
        (
            "Regenerations and filtered answers (1 h)",
            "percentunit",
            [
                (f"tollway:{name}:ratio1h{{{matchers}}}", f"{name.replace('_', ' ')} v{{{{version}}}}")
                for name in QUALITY_SHARES
            ],
        ),
        (
            "Prompt check matches (1 h)",
            "short",
            [(f"tollway:prompt_matches:increase1h{{{matchers}}}", "{{tier}}: {{pattern}} v{{version}}")],
        ),
    ]
    if serving.openai is not None and serving.openai.cache is not None:
        hits = f"tollway:cache_hit_ratio:rate5m{{{matchers}}}"
        panels.append(("Answer cache hits (of lookups, 5m)", "percentunit", [(hits, "{{tier}}")]))
    panels += cost_panels(matchers) if serving.cost is not None else []
    document = {
        "title": f"Tollway: {serving.namespace}/{serving.name}",
        "uid": f"tollway-{serving.namespace}-{serving.name}"[:40],
        "schemaVersion": 39,
        "tags": ["tollway"],
        "time": {"from": "now-6h", "to": "now"},
        "panels": [_panel(index, *panel) for index, panel in enumerate(panels)],
    }
    labels = {**metadata["labels"], **DASHBOARD_LABEL}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {**metadata, "labels": labels},
        "data": {
            f"tollway-{serving.namespace}-{serving.name}.json": json.dumps(document, indent=1, sort_keys=True)
        },
    }


def cost_panels(matchers: str) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """The dashboard's cost row: what the replicas cost per hour, the cost per 1k tokens over the last hour,
    and each tier's margin on the model over the last day."""
    return [
        ("Serving cost per hour", "short", [(f"tollway:model_cost_per_hour{{{matchers}}}", "{{currency}}")]),
        (
            "Cost per 1k tokens (1 h)",
            "short",
            [
                (f"tollway:model_cost_per_1k_{side}_tokens:1h{{{matchers}}}", f"{side} {{{{currency}}}}")
                for side in ("input", "output")
            ],
        ),
        (
            "Margin per tier (1 day)",
            "short",
            [(f"tollway:tier_model_margin:1d{{{matchers}}}", "{{tier}} {{currency}}")],
        ),
    ]
