"""Scaling on the signals that matter for inference: how busy Triton keeps its replicas, its queue depth,
the P99 latency while requests wait and, for streamed answers, the P99 time to first token; not CPU. A model
that scales to zero also scales on the requests the gateway holds or has in flight for it: its own pods
report nothing at zero, so the gateway's count is what wakes it.

`engine: hpa` renders an autoscaling/v2 HorizontalPodAutoscaler with External metrics, which
prometheus-adapter serves from Prometheus with the rules in `adapter_rules()`; `engine: keda` renders a
KEDA ScaledObject with Prometheus triggers on the same queries (KEDA makes its own HPA; never both).
External metrics, not Pods metrics: the signals belong to the model, and the HPA divides the busy time and
the queue by the current replicas itself (AverageValue), so a pod that is not ready yet does not distort
the figure. bench/scaling.py is where the defaults come from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from tollway.documents import dump
from tollway.ir.names import MODEL_CLUSTERS
from tollway.ir.serving import Scaling, TritonServing
from tollway.render.monitoring import cached_latency_ms, request_latency_ms

BUSY_METRIC = "tollway_triton_busy"
QUEUE_METRIC = "tollway_triton_queue_depth"
P99_METRIC = "tollway_triton_waiting_p99_ms"
TTFT_METRIC = "tollway_ttft_p99_ms"
GATEWAY_METRIC = "tollway_gateway_demand"
GATEWAY_CLUSTERS = f'envoy_cluster_name=~"{MODEL_CLUSTERS}.+"'
"""The gateway's clusters whose active requests are a model's: its holds and Tritons (a tier's own too)."""
BUSY_WINDOW = "45s"
"""Three of Triton's 15 s scrapes: short enough to follow a burst, long enough for rate() to have two."""

Manifest = dict[str, Any]


def model_matchers(namespace: str, model: str) -> str:
    """The label matchers of one model's series, for KEDA's queries (the adapter's come from the HPA)."""
    return f'namespace="{namespace}",model="{model}"'


def queue_expression(matchers: str) -> str:
    """Requests waiting in Triton's queues, over all of the pods of the models `matchers` select."""
    return f"sum(nv_inference_pending_request_count{{{matchers}}})"


def busy_expression(matchers: str) -> str:
    """Replicas' worth of time Triton spent executing the models `matchers` select: the compute time per
    request times the executions, as rates (Triton adds a batch's compute time to each request in it), in
    seconds a second, summed over the pods; 0 while nothing runs."""

    def rate(counter: str) -> str:
        return f"rate({counter}{{{matchers}}}[{BUSY_WINDOW}])"

    executing = (
        f"{rate('nv_inference_compute_infer_duration_us')} * {rate('nv_inference_exec_count')}"
        f" / ({rate('nv_inference_request_success')} > 0)"
    )
    return f"sum by (model) ({executing}) / 1e6 or sum by (model) ({rate('nv_inference_exec_count')}) * 0"


def waiting_p99_expression(matchers: str) -> str:
    """The P99 request latency in ms of the models `matchers` select while requests wait in their queues,
    else 0: more replicas shorten the time spent waiting, never the model's own, so a P99 that no queue
    explains must not hold replicas (bench/scaling.py)."""
    waiting = f"sum by (model) (nv_inference_pending_request_count{{{matchers}}})"
    return f"({p99_expression(matchers)}) and on (model) ({waiting} >= 1) or on (model) ({waiting} * 0)"


def p99_expression(matchers: str) -> str:
    """The P99 request latency in ms of the models `matchers` select, as in the recording rules: Triton's
    request summary, or for a model with the response cache on (which has none) the sum of its stages."""
    return (
        f"{request_latency_ms(matchers, '0.99', 'model')} or {cached_latency_ms(matchers, '0.99', 'model')}"
    )


def gateway_expression(matchers: str) -> str:
    """1 while the gateway holds (a model's `hold|MODEL|TIER` clusters) or has in flight to its Tritons any
    request for the model, over every gateway replica, else 0: Envoy's gauge of active requests, which carries
    a `model` label for those clusters (render/envoy.MODEL_STAT_TAG). At most 1: it wakes the model and keeps
    one replica; how many more is the other signals' to say, not a count that also counts requests in flight
    (it would scale on concurrency, with no target for it)."""
    active = f"envoy_cluster_upstream_rq_active{{{matchers},{GATEWAY_CLUSTERS}}}"
    return f"clamp_max(sum by (model) ({active}), 1)"


def ttft_expression(matchers: str) -> str:
    """The P99 time to first token in ms of the models `matchers` select: the gateway's histogram of streams
    (every Envoy replica's), else Triton's own first-response histogram, over the last two minutes."""
    quantiles = (
        f"histogram_quantile(0.99, sum by (model, le) (rate({histogram}_bucket{{{matchers}}}[2m])))"
        for histogram in ("envoy_tollway_stream_ttft_ms", "nv_inference_first_response_histogram_ms")
    )
    return " or ".join(quantiles)


def milli_quantity(value: str) -> str:
    """A decimal of at most three places in Kubernetes' canonical quantity form ("0.7" → "700m")."""
    whole, _, fraction = value.partition(".")
    thousandths = int(whole) * 1000 + int((fraction + "000")[:3])
    return quantity(thousandths // 1000) if thousandths % 1000 == 0 else f"{thousandths}m"


def quantity(value: int) -> str:
    """An integer in Kubernetes' canonical quantity form (600000 → "600k"), as the API server stores it, so
    the live object compares equal to the rendered one."""
    for suffix, factor in (
        ("E", 10**18),
        ("P", 10**15),
        ("T", 10**12),
        ("G", 10**9),
        ("M", 10**6),
        ("k", 10**3),
    ):
        if value and value % factor == 0:
            return f"{value // factor}{suffix}"
    return str(value)


def adapter_rules() -> dict[str, Any]:
    """prometheus-adapter's `externalRules` for the metrics Tollway's HPAs read.

    The HPA's namespace and its selector (model=NAME) become label matchers (<<.LabelMatchers>>).
    """
    by_namespace = {"overrides": {"namespace": {"resource": "namespace"}}}
    return {
        "externalRules": [
            {
                "seriesQuery": 'nv_inference_exec_count{namespace!="",model!=""}',
                "resources": by_namespace,
                "name": {"matches": "^nv_inference_exec_count$", "as": BUSY_METRIC},
                "metricsQuery": busy_expression("<<.LabelMatchers>>"),
            },
            {
                "seriesQuery": 'nv_inference_pending_request_count{namespace!="",model!=""}',
                "resources": by_namespace,
                "name": {"matches": "^nv_inference_pending_request_count$", "as": QUEUE_METRIC},
                "metricsQuery": "sum by (model) (<<.Series>>{<<.LabelMatchers>>})",
            },
            {
                # The queue summary exists for every model, cached or not (the request summary does not).
                "seriesQuery": 'nv_inference_queue_summary_us{namespace!="",model!="",quantile="0.99"}',
                "resources": by_namespace,
                "name": {"matches": "^nv_inference_queue_summary_us$", "as": P99_METRIC},
                "metricsQuery": waiting_p99_expression("<<.LabelMatchers>>"),
            },
            {
                "seriesQuery": 'envoy_cluster_upstream_rq_active{namespace!="",model!=""}',
                "resources": by_namespace,
                "name": {"matches": "^envoy_cluster_upstream_rq_active$", "as": GATEWAY_METRIC},
                "metricsQuery": gateway_expression("<<.LabelMatchers>>"),
            },
            {
                # Found once a stream has gone through the gateway (Triton's histogram is the fallback).
                "seriesQuery": 'envoy_tollway_stream_ttft_ms_bucket{namespace!="",model!=""}',
                "resources": by_namespace,
                "name": {"matches": "^envoy_tollway_stream_ttft_ms_bucket$", "as": TTFT_METRIC},
                "metricsQuery": ttft_expression("<<.LabelMatchers>>"),
            },
        ]
    }


def adapter_config_map(namespace: str) -> Manifest:
    """The rules as a ConfigMap for prometheus-adapter's --config, in the namespace it runs in (one per
    cluster: the rules match every Tollway model)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "tollway-prometheus-adapter",
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/managed-by": "tollway",
                "app.kubernetes.io/component": "prometheus-adapter",
            },
        },
        "data": {"config.yaml": dump(adapter_rules())},
    }


def _behavior(scaling: Scaling) -> dict[str, Any]:
    """Up at once (ten times, or 16 more pods, per 15 s: a replica takes a minute to start, so what a burst
    needs is asked for in one step), down gently (half the replicas a minute), after stabilization."""
    return {
        "scaleUp": {
            "stabilizationWindowSeconds": scaling.scale_up_seconds,
            "selectPolicy": "Max",
            "policies": [
                {"type": "Percent", "value": 900, "periodSeconds": 15},
                {"type": "Pods", "value": 16, "periodSeconds": 15},
            ],
        },
        "scaleDown": {
            "stabilizationWindowSeconds": scaling.scale_down_seconds,
            "selectPolicy": "Max",
            "policies": [{"type": "Percent", "value": 50, "periodSeconds": 60}],
        },
    }


@dataclass(frozen=True)
class Signal:
    """One signal the model scales on, as the HPA (an External metric, through prometheus-adapter) and KEDA
    (a Prometheus trigger) each read it."""

    metric: str
    """The External metric's name (adapter_rules)."""
    expression: Callable[[str], str]
    """Its PromQL over label matchers, as KEDA queries it."""
    kind: Literal["AverageValue", "Value"]
    """AverageValue: the HPA divides it by the replicas; Value: the ratio scales the ready ones."""
    target: str
    """The HPA's target, in the quantity form the API server stores."""
    threshold: str
    """KEDA's."""
    activation: str | None = None
    """KEDA's activationThreshold, where the signal can wake a model at zero."""


def signals(scaling: Scaling) -> list[Signal]:
    found = []
    if scaling.utilization is not None:
        utilization = scaling.utilization
        found.append(
            Signal(BUSY_METRIC, busy_expression, "AverageValue", milli_quantity(utilization), utilization)
        )
    if scaling.queue_depth_per_replica is not None:
        depth = scaling.queue_depth_per_replica
        found.append(Signal(QUEUE_METRIC, queue_expression, "AverageValue", quantity(depth), str(depth), "0"))
    if scaling.wakes:
        found.append(Signal(GATEWAY_METRIC, gateway_expression, "AverageValue", "1", "1", "0"))
    for metric, expression, target in (
        (P99_METRIC, waiting_p99_expression, scaling.p99_latency_ms),
        (TTFT_METRIC, ttft_expression, scaling.ttft_p99_ms),
    ):
        if target is not None:
            found.append(Signal(metric, expression, "Value", quantity(target), str(target)))
    return found


def horizontal_pod_autoscaler(serving: TritonServing, scaling: Scaling, metadata: dict[str, Any]) -> Manifest:
    selector = {"matchLabels": {"model": serving.model.name}}
    metrics = [
        {
            "type": "External",
            "external": {
                "metric": {"name": signal.metric, "selector": selector},
                "target": {
                    "type": signal.kind,
                    ("averageValue" if signal.kind == "AverageValue" else "value"): signal.target,
                },
            },
        }
        for signal in signals(scaling)
    ]
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata,
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": metadata["name"]},
            "minReplicas": scaling.least,
            "maxReplicas": scaling.max_replicas,
            "metrics": metrics,
            "behavior": _behavior(scaling),
        },
    }


def scaled_object(serving: TritonServing, scaling: Scaling, metadata: dict[str, Any]) -> Manifest:
    matchers = model_matchers(serving.namespace, serving.model.name)
    triggers = [
        {
            "type": "prometheus",
            "metricType": signal.kind,
            "metadata": {
                "serverAddress": scaling.prometheus_url,
                "query": signal.expression(matchers),
                "threshold": signal.threshold,
                **({"activationThreshold": signal.activation} if signal.activation is not None else {}),
            },
        }
        for signal in signals(scaling)
    ]
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": metadata,
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": metadata["name"]},
            "minReplicaCount": scaling.least,
            "maxReplicaCount": scaling.max_replicas,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": _behavior(scaling)}},
            "triggers": triggers,
        },
    }


def scaler(serving: TritonServing, metadata: dict[str, Any]) -> list[Manifest]:
    """The HPA or the ScaledObject, or nothing when the replica count is fixed."""
    scaling = serving.scaling
    if scaling is None:
        return []
    if scaling.engine == "keda":
        return [scaled_object(serving, scaling, metadata)]
    return [horizontal_pod_autoscaler(serving, scaling, metadata)]
