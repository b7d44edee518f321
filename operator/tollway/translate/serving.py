"""ModelDeployment → TritonServing (the IR of its serving stack)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from tollway import __version__
from tollway.api import API_VERSION, ApiTierSpec, ModelDeployment
from tollway.api.model_deployment import TokenFields
from tollway.ir.gateway import Images
from tollway.ir.serving import (
    AnswerCache,
    InstanceGroup,
    ModelConfig,
    Objectives,
    OpenAISide,
    Owner,
    QueuePolicy,
    Repository,
    Scaling,
    Sunset,
    TritonServing,
)
from tollway.translate.cost import plan_cost

#: Used for s3://, gs:// and as:// repositories: downloads the model directory before Triton starts.
STORAGE_INITIALIZER = "kserve/storage-initializer:v0.14.1"
#: Runs `tollway openai-server` beside Triton: Tollway's own image (the chart passes the operator's).
TOLLWAY_IMAGE = f"tollway/operator:{__version__}"
DEFAULT_MAX_TOKENS = TokenFields.model_fields["default_max_tokens"].default
#: Where KEDA's triggers and the operator's status queries reach Prometheus (prometheus-operator's Service).
PROMETHEUS_URL = "http://prometheus-operated.monitoring.svc:9090"


def tier_priority(document: Mapping[str, Any]) -> int:
    """An ApiTier's priority, as its document gives it or by the schema's default."""
    default: int = ApiTierSpec.model_fields["priority"].default
    priority = (document.get("spec") or {}).get("priority", default)
    return priority if isinstance(priority, int) else default  # an invalid tier reports itself


def priority_levels(tier_priorities: Iterable[int]) -> dict[int, int]:
    """ApiTier priority → Triton priority level: the rank among the distinct priorities in the namespace.

    Triton levels run from 1 (served first) to `priority_levels`; the gateway sends each request's level.
    """
    return {priority: rank for rank, priority in enumerate(sorted(set(tier_priorities)), start=1)}


def repository(uri: str) -> Repository:
    if uri.startswith("pvc://"):
        claim, _, path = uri.removeprefix("pvc://").partition("/")
        return Repository(uri=uri, claim=claim, path=path.strip("/"))
    return Repository(uri=uri)


def model_config(resource: ModelDeployment, tier_priorities: Iterable[int]) -> ModelConfig:
    spec = resource.spec
    levels = max(len(priority_levels(tier_priorities)), 1)
    groups = tuple(
        InstanceGroup(
            count=group.count, kind="KIND_GPU" if group.kind == "GPU" else "KIND_CPU", gpus=tuple(group.gpus)
        )
        for group in spec.triton.instance_groups
    ) or (InstanceGroup(count=1, kind="KIND_GPU" if spec.triton.gpus else "KIND_CPU"),)
    tensorrt = spec.optimization.precision if spec.optimization.accelerator == "tensorrt" else None
    return ModelConfig(
        name=resource.model_name,
        backend=spec.model.backend,
        max_batch_size=spec.model.max_batch_size,
        versions=tuple(sorted((int(entry.version) for entry in spec.versions), reverse=True)),
        instance_groups=groups,
        preferred_batch_sizes=tuple(spec.batching.preferred_batch_sizes),
        max_queue_delay_microseconds=spec.batching.max_queue_delay_microseconds,
        priority_levels=levels,
        default_priority_level=levels,  # requests that name no tier queue behind every tier
        queue=QueuePolicy(spec.queue.max_queue_size, spec.queue.timeout_microseconds),
        # A decoupled model's answers are cached by its OpenAI server instead (`answer_cache`).
        response_cache=spec.cache.enabled and not spec.model.streams,
        tensorrt_precision=tensorrt,
        decoupled=spec.model.streams,
    )


DEFAULT_UTILIZATION = "0.7"
"""The busy share a model that does not stream scales to when its spec names none (bench/scaling.py)."""


def scaling(resource: ModelDeployment, prometheus_url: str, floor: int = 0) -> Scaling | None:
    """Autoscaling when there is room to scale and a signal to scale on; else a fixed replica count.
    `floor`: the replicas a burst holds (`translate.floor`), 0 when none does."""
    autoscaling = resource.spec.autoscaling
    targets = autoscaling.targets
    wakes = autoscaling.min_replicas == 0  # the requests the gateway holds are a signal of their own
    if autoscaling.max_replicas <= autoscaling.min_replicas or (
        targets.queue_depth_per_replica is None
        and targets.p99_latency_ms is None
        and targets.utilization is None
        and not wakes
    ):
        return None
    streams = resource.spec.model.streams
    return Scaling(
        engine=autoscaling.engine,
        min_replicas=autoscaling.min_replicas,
        max_replicas=autoscaling.max_replicas,
        utilization=targets.utilization or (None if streams else DEFAULT_UTILIZATION),
        queue_depth_per_replica=targets.queue_depth_per_replica,
        p99_latency_ms=targets.p99_latency_ms,
        scale_up_seconds=autoscaling.scale_up.stabilization_seconds,
        scale_down_seconds=autoscaling.scale_down.stabilization_seconds,
        prometheus_url=prometheus_url,
        ttft_p99_ms=targets.ttft_p99_ms,
        wakes=wakes,
        floor=min(floor, autoscaling.max_replicas),
    )


def objectives(resource: ModelDeployment) -> Objectives | None:
    slo = resource.spec.slo
    if slo is None:
        return None
    sunsets = tuple(
        Sunset(version=int(entry.version), at=epoch(entry.deprecation.sunset))
        for entry in resource.spec.versions
        if entry.deprecation and entry.deprecation.sunset
    )
    return Objectives(slo.availability, slo.p99_latency_ms, slo.window_days, sunsets, slo.ttft_p99_ms)


def epoch(date: str) -> int:
    """'2027-01-15' → the Unix seconds of its start, UTC."""
    return int(datetime.fromisoformat(date).replace(tzinfo=UTC).timestamp())


def openai_max_tokens(resource: ModelDeployment) -> int:
    """What an OpenAI request that names no max_tokens may generate: the model's token default."""
    tokens = resource.spec.model.tokens
    return tokens.default_max_tokens if tokens else DEFAULT_MAX_TOKENS


def openai_side(resource: ModelDeployment, redis_image: str = Images.redis) -> OpenAISide | None:
    """The OpenAI server a model that speaks the OpenAI API gets beside its Triton; None for any other."""
    model = resource.spec.model
    api = model.openai
    if api is None:
        return None
    return OpenAISide(
        kind=api.kind,
        default_max_tokens=openai_max_tokens(resource),
        text_input=api.text_input,
        text_output=api.text_output,
        max_tokens_input=api.max_tokens_input,
        stream_input=api.stream_input,
        embedding_output=api.embedding_output,
        chat_template=api.chat_template,
        cache=answer_cache(resource, redis_image),
    )


def caches_answers(resource: ModelDeployment) -> bool:
    """Whether the model's OpenAI server keeps answers: a chat or completion model whose spec turns caching
    on."""
    return resource.spec.cache.enabled and resource.spec.model.streams


def answer_cache(resource: ModelDeployment, redis_image: str) -> AnswerCache | None:
    """The OpenAI server's cache, where it keeps answers."""
    cache = resource.spec.cache
    if not caches_answers(resource):
        return None
    return AnswerCache(
        shared=cache.store == "shared",
        size_bytes=cache.size_bytes,
        ttl_seconds=cache.ttl_seconds,
        sampled=cache.sampled,
        redis_image=redis_image,
    )


def plan_serving(
    resource: ModelDeployment,
    tier_priorities: Iterable[int],
    storage_initializer: str,
    *,
    prometheus_url: str = PROMETHEUS_URL,
    monitoring: bool = True,
    tollway_image: str = TOLLWAY_IMAGE,
    redis_image: str = Images.redis,
    floor: int = 0,
) -> TritonServing:
    spec, meta = resource.spec, resource.metadata
    model = model_config(resource, tier_priorities)
    return TritonServing(
        name=meta.name,
        namespace=meta.namespace,
        owner=Owner(api_version=API_VERSION, kind=resource.kind_name, name=meta.name, uid=meta.uid),
        model=model,
        repository=repository(spec.model.repository),
        image=spec.triton.image,
        tollway_image=tollway_image,
        storage_initializer_image=storage_initializer,
        gpus=spec.triton.gpus,
        requests=dict(spec.triton.resources.requests),
        limits=dict(spec.triton.resources.limits),
        node_selector=dict(spec.triton.node_selector),
        tolerations=tuple(
            toleration.model_dump(by_alias=True, exclude_none=True) for toleration in spec.triton.tolerations
        ),
        cache_size_bytes=spec.cache.size_bytes if model.response_cache else None,
        extra_args=tuple(spec.triton.extra_args),
        replicas=spec.autoscaling.min_replicas,
        max_replicas=spec.autoscaling.max_replicas,
        scaling=scaling(resource, prometheus_url, floor),
        objectives=objectives(resource),
        monitoring=monitoring,
        openai=openai_side(resource, redis_image),
        cost=plan_cost(resource),
    )
