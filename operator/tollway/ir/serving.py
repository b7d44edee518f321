"""What serving one ModelDeployment takes: the Triton model config and the pods that run it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tollway.ir.cost import ServingCost


@dataclass(frozen=True)
class InstanceGroup:
    count: int
    kind: Literal["KIND_GPU", "KIND_CPU"]
    gpus: tuple[int, ...] = ()


@dataclass(frozen=True)
class QueuePolicy:
    max_queue_size: int
    timeout_microseconds: int


@dataclass(frozen=True)
class ModelConfig:
    """Triton's model configuration, in Triton's terms."""

    name: str
    backend: str
    max_batch_size: int
    versions: tuple[int, ...]
    instance_groups: tuple[InstanceGroup, ...]
    preferred_batch_sizes: tuple[int, ...]
    max_queue_delay_microseconds: int
    priority_levels: int
    default_priority_level: int
    queue: QueuePolicy
    response_cache: bool
    tensorrt_precision: str | None = None
    decoupled: bool = False
    """Triton's decoupled transaction policy: any number of responses per request (a streamed answer)."""


@dataclass(frozen=True)
class AnswerCache:
    """The OpenAI server's cache of a chat or completion model's answers (spec.cache)."""

    shared: bool
    """One Redis for every replica (a child of the model); else each server keeps its own."""
    size_bytes: int
    ttl_seconds: int
    sampled: bool
    """Requests that sample are cached too."""
    redis_image: str
    """The shared cache's image."""


@dataclass(frozen=True)
class OpenAISide:
    """The OpenAI side of a model (spec.model.openai): `tollway openai-server` beside Triton in each pod, and
    how it maps a request onto the model's tensors."""

    kind: Literal["chat", "completion", "embedding"]
    default_max_tokens: int
    text_input: str
    text_output: str
    max_tokens_input: str
    stream_input: str
    embedding_output: str
    chat_template: str | None = None
    """None: the chat template of the tokenizer_config.json in the model's directory."""
    cache: AnswerCache | None = None


@dataclass(frozen=True)
class Repository:
    """Where the model directory (its version subdirectories) lives."""

    uri: str
    claim: str | None = None
    """For pvc://CLAIM/PATH: the claim, mounted read-only; `path` is the model directory on it."""
    path: str = ""


@dataclass(frozen=True)
class Owner:
    api_version: str
    kind: str
    name: str
    uid: str


@dataclass(frozen=True)
class Scaling:
    """How the replica count follows demand: an HPA or a KEDA ScaledObject on Triton's own signals."""

    engine: Literal["hpa", "keda"]
    min_replicas: int
    max_replicas: int
    utilization: str | None
    """Triton's busy time per replica to hold (a decimal), or None."""
    queue_depth_per_replica: int | None
    p99_latency_ms: int | None
    scale_up_seconds: int
    scale_down_seconds: int
    prometheus_url: str
    """Where KEDA's triggers query (the HPA goes through prometheus-adapter instead)."""
    ttft_p99_ms: int | None = None
    wakes: bool = False
    """The model scales to zero, and the gateway's requests for it wake it: one replica while the gateway
    holds or has in flight any request for the model (the other signals size it beyond one)."""
    floor: int = 0
    """Replicas a burst asked for, held as the autoscaler's minimum for a while (`translate.floor`); 0: no
    burst holds one."""

    @property
    def least(self) -> int:
        """The autoscaler's minimum: the spec's, or the burst floor while one holds."""
        return max(self.min_replicas, self.floor)


@dataclass(frozen=True)
class Sunset:
    version: int
    at: int
    """Unix seconds."""


@dataclass(frozen=True)
class Objectives:
    """What the model's alerts watch: the SLOs, and the versions going away."""

    availability: str
    """Percent of requests answered without an error, as a decimal string ("99.9")."""
    p99_latency_ms: int
    window_days: int
    sunsets: tuple[Sunset, ...] = ()
    ttft_p99_ms: int | None = None
    """Streamed answers' P99 time to the first token; None: not an objective."""


@dataclass(frozen=True)
class TritonServing:
    """One ModelDeployment's serving stack."""

    name: str
    namespace: str
    owner: Owner
    model: ModelConfig
    repository: Repository
    image: str
    storage_initializer_image: str
    tollway_image: str
    """Tollway's own image: it merges the repository's config.pbtxt with the rendered one before Triton
    starts, and runs a model's OpenAI server."""
    gpus: int
    requests: dict[str, str | int] = field(default_factory=dict)
    limits: dict[str, str | int] = field(default_factory=dict)
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, str | int], ...] = ()
    cache_size_bytes: int | None = None
    extra_args: tuple[str, ...] = ()
    replicas: int = 1
    max_replicas: int = 1
    scaling: Scaling | None = None
    """None: a fixed replica count (`replicas`), set on the Deployment."""
    objectives: Objectives | None = None
    monitoring: bool = True
    """Render ServiceMonitor and PrometheusRule (when the cluster serves prometheus-operator's CRDs)."""
    openai: OpenAISide | None = None
    """None: the model is served over Triton's own protocol only."""
    cost: ServingCost | None = None
    """None: no cost rules (spec.cost unset)."""
