"""ModelDeployment: one model served by Triton Inference Server."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from tollway.api.base import (
    Conditions,
    DateString,
    DecimalString,
    PrinterColumn,
    Quantity,
    Resource,
    Rule,
    TollwayModel,
    age_column,
    decimal,
    matches,
    pattern_rule,
    ready_column,
)
from tollway.api.cost import Cost, CostStatus

MODEL_NAME = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
TENSOR_NAME = "^[A-Za-z_][A-Za-z0-9_.-]*$"
ALIAS_NAME = "^[a-z][a-z0-9-]{0,30}$"
REPOSITORY = "^((s3|gs|as)://[^/ ]+(/[^ ]*)?|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/[^ ]*)?)$"

VersionString = Annotated[str, StringConstraints(pattern="^[1-9][0-9]{0,9}$", max_length=10)]


#: Printable ASCII but space, '"', '<' and '>': nothing that could end the Link header's <url> or the header.
LINK = "^https?://[!#-;=?-~]+$"


class TokenFields(TollwayModel):
    """Where a response reports its token usage, as dotted paths into the JSON response."""

    input_field: Annotated[str, StringConstraints(min_length=1, max_length=128)] = "usage.prompt_tokens"
    """Path of the number of input (prompt) tokens."""
    output_field: Annotated[str, StringConstraints(min_length=1, max_length=128)] = "usage.completion_tokens"
    """Path of the number of output (completion) tokens."""
    default_max_tokens: int = Field(default=256, ge=1, le=1_000_000)
    """Output tokens the gateway reserves for a request that sets no `parameters.max_tokens`."""
    usage_output: Annotated[str, StringConstraints(pattern=TENSOR_NAME, max_length=128)] | None = None
    """The output tensor that carries the counts (a BYTES tensor holding JSON, such as `USAGE`). A request
    whose `outputs` list leaves it out gets it added, so the usage always comes back. Unset: the counts are
    in the response itself, which no request can leave out."""


TensorName = Annotated[str, StringConstraints(pattern=TENSOR_NAME, max_length=128)]
STREAMING_KINDS = ("chat", "completion")


class OpenAIApi(TollwayModel):
    """How the model answers the OpenAI API (`/v1/chat/completions`, `/v1/completions` or `/v1/embeddings`):
    the Triton tensors an OpenAI request maps onto, by default those of Triton's vLLM and TensorRT-LLM
    backends. A chat or completion model streams its answer, so Triton serves it decoupled (one response
    per piece of text it generates)."""

    rules = (
        Rule(
            field=".chatTemplate",
            message="chatTemplate is for kind chat",
            cel="!has(self.chatTemplate) || self.kind == 'chat'",
            holds=lambda api: api.chat_template is None or api.kind == "chat",
        ),
    )

    kind: Literal["chat", "completion", "embedding"]
    """What the model does: answers chat messages, completes a prompt, or embeds text."""
    text_input: TensorName = "text_input"
    """The BYTES input that receives the prompt (for chat: the messages through the chat template), or the
    text to embed."""
    text_output: TensorName = "text_output"
    """chat, completion: the BYTES output with the generated text (in a streamed answer, each new piece)."""
    max_tokens_input: TensorName = "max_tokens"
    """chat, completion: the INT32 input that receives the request's `max_tokens` (or
    `max_completion_tokens`; else tokens.defaultMaxTokens)."""
    stream_input: TensorName = "stream"
    """chat, completion: the BOOL input that tells the model to answer in pieces."""
    embedding_output: TensorName = "embedding"
    """embedding: the FP32 output with the vector."""
    chat_template: Annotated[str, StringConstraints(min_length=1, max_length=65536)] | None = None
    """chat: the Jinja template that turns `messages` into the prompt, in the form of Hugging Face's
    `tokenizer_config.json` (it sees `messages`, `add_generation_prompt`, `bos_token`, `eos_token`). Unset:
    the `chat_template` of the `tokenizer_config.json` in the model's repository directory."""


class ModelSource(TollwayModel):
    """The model itself and where Triton finds it."""

    rules = (
        pattern_rule(".name", MODEL_NAME, "name must be a Triton model name: letters, digits, '_', '.', '-'"),
        Rule(
            field=".repository",
            message="repository must be s3://BUCKET/PATH, gs://BUCKET/PATH, as://ACCOUNT/CONTAINER/PATH "
            "or pvc://CLAIM/PATH",
            cel=f"self.repository.matches('{REPOSITORY}')",
            holds=lambda model: matches(REPOSITORY, model.repository),
        ),
    )

    name: Annotated[str, StringConstraints(max_length=63)] | None = None
    """Triton model name, also the public name in the gateway's routes. Defaults to metadata.name."""
    repository: Annotated[str, StringConstraints(max_length=1024)]
    """Triton model repository: s3://, gs://, as://, or pvc://CLAIM/PATH (mounts the claim)."""
    backend: Literal["python", "onnxruntime", "tensorrt", "tensorrtllm", "pytorch", "vllm"]
    """Triton backend that runs the model."""
    max_batch_size: int = Field(default=0, ge=0, le=4096)
    """Largest batch Triton may form; 0 turns batching off."""
    tokens: TokenFields | None = None
    """How a response reports token usage, for token limits and pricing. Unset: tokens are not counted."""
    max_request_bytes: int = Field(default=16 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    """The largest request body the gateway reads for this model (413 beyond it): the gateway holds a
    request's whole body in memory while it checks it."""
    openai: OpenAIApi | None = None
    """How the model answers the OpenAI API (the operator runs `tollway openai-server` beside Triton for
    it). Unset: it is served over Triton's own protocol only."""

    @property
    def streams(self) -> bool:
        """Whether Triton serves it decoupled: a chat or completion model answers in pieces."""
        return self.openai is not None and self.openai.kind in STREAMING_KINDS


class Deprecation(TollwayModel):
    """When a version stops being recommended, and when it stops being served."""

    rules = (
        Rule(
            field=".sunset",
            message="sunset must be after announced",
            cel="!has(self.sunset) || self.sunset > self.announced",
            holds=lambda model: model.sunset is None or model.sunset > model.announced,
        ),
    )

    announced: DateString
    """From this date responses carry a Deprecation header."""
    sunset: DateString | None = None
    """From this date (00:00 UTC) the gateway answers 410 Gone."""
    link: Annotated[str, StringConstraints(pattern=LINK, max_length=2048)] | None = None
    """Migration guide, sent as Link: <url>; rel="deprecation". An http(s) URL of printable ASCII without
    spaces, quotes or angle brackets: it goes into a response header as written."""


class ModelVersion(TollwayModel):
    """One served version of the model."""

    version: VersionString
    """Triton version number (a directory in the model repository)."""
    deprecation: Deprecation | None = None


class Toleration(TollwayModel):
    """A Kubernetes toleration, so Triton pods may land on tainted GPU nodes."""

    key: Annotated[str, StringConstraints(max_length=316)] | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: Annotated[str, StringConstraints(max_length=63)] | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class ResourceRequirements(TollwayModel):
    """CPU and memory for each Triton pod (GPUs come from `gpus`)."""

    requests: dict[str, Quantity] = Field(default_factory=dict)
    limits: dict[str, Quantity] = Field(default_factory=dict)


class InstanceGroup(TollwayModel):
    """How many copies of the model each Triton pod runs, and on what."""

    count: int = Field(default=1, ge=1, le=64)
    kind: Literal["GPU", "CPU"] = "GPU"
    gpus: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list, max_length=16)
    """GPU device ids inside the pod; empty = all of the pod's GPUs."""


class Triton(TollwayModel):
    """The Triton Inference Server pods."""

    image: Annotated[str, StringConstraints(min_length=1, max_length=512)] = (
        "nvcr.io/nvidia/tritonserver:25.01-py3"
    )
    gpus: int = Field(default=1, ge=0, le=16)
    """nvidia.com/gpu per replica; 0 runs on CPU."""
    resources: ResourceRequirements = ResourceRequirements()
    node_selector: dict[str, Annotated[str, StringConstraints(max_length=63)]] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    instance_groups: list[InstanceGroup] = Field(default_factory=list, max_length=8)
    """Model instances per pod. Empty: one instance, on GPU when gpus > 0, else on CPU."""
    extra_args: list[Annotated[str, StringConstraints(max_length=1024)]] = Field(
        default_factory=list, max_length=64
    )
    """Further tritonserver flags, appended as given."""


class Batching(TollwayModel):
    """Triton's dynamic batcher."""

    max_queue_delay_microseconds: int = Field(default=0, ge=0, le=60_000_000)
    """How long a request may wait for others to fill a batch."""
    preferred_batch_sizes: list[Annotated[int, Field(ge=1)]] = Field(default_factory=list, max_length=16)


class QueuePolicy(TollwayModel):
    """What Triton does with requests it cannot start yet."""

    max_queue_size: int = Field(default=0, ge=0, le=1_000_000)
    """Requests waiting per replica; beyond that Triton rejects. 0 = unbounded."""
    timeout_microseconds: int = Field(default=0, ge=0, json_schema_extra={"format": "int64"})
    """A request waiting longer is rejected. 0 = no timeout."""


class Cache(TollwayModel):
    """Answers kept for identical requests. A chat or completion model (which Triton serves decoupled, out
    of reach of its own response cache) is cached by its OpenAI server: keyed on the prompt, the resolved
    version and every parameter, with a TTL, per pod or shared. Any other model uses Triton's response
    cache, per pod, which keys on the model, version and input tensors only."""

    enabled: bool = False
    size_bytes: int = Field(default=268_435_456, ge=1, json_schema_extra={"format": "int64"})
    """The bound: per pod (`store: pod`), or the memory of the model's shared cache (`store: shared`)."""
    store: Literal["pod", "shared"] = "pod"
    """pod: each replica keeps its own answers; shared: one Redis (a child of the model, its pods only) for
    every replica, so that hits do not fall as the model scales out. Chat and completion models only."""
    ttl_seconds: int = Field(default=3600, ge=1, le=2_592_000)
    """How long a chat or completion answer is served from the cache (Triton's cache keeps entries until
    they are evicted)."""
    sampled: bool = False
    """Also cache chat and completion requests that sample (temperature > 0 and no seed): repeats then get
    the first answer instead of a new sample. Off: only deterministic requests are cached."""


class Optimization(TollwayModel):
    """Execution accelerators."""

    accelerator: Literal["none", "tensorrt"] = "none"
    precision: Literal["FP32", "FP16", "INT8"] = "FP16"


class ScalingBehavior(TollwayModel):
    stabilization_seconds: int = Field(default=0, ge=0, le=3600)
    """How long the autoscaler looks back before changing the replica count in this direction."""


class ScalingTargets(TollwayModel):
    """The signals to scale on; at least one."""

    rules = (
        Rule(
            field=".utilization",
            message="utilization must be above 0",
            cel="!has(self.utilization) || double(self.utilization) > 0.0",
            holds=lambda targets: targets.utilization is None or decimal(targets.utilization) > 0,
        ),
    )

    utilization: Annotated[str, StringConstraints(pattern=r"^[0-9]{1,2}(\.[0-9]{1,3})?$")] | None = None
    """The share of its time each replica's Triton may spend executing (Triton's compute time per execution
    times its executions, over 45 s; 1 is one model instance always busy). Unset: 0.7 for a model that does
    not stream, with whichever target is set (README: "Why these defaults"); none for a streaming model,
    whose compute time counts its concurrent generations instead."""
    queue_depth_per_replica: int | None = Field(default=None, ge=1)
    """Average Triton pending requests per replica."""
    p99_latency_ms: int | None = Field(default=None, ge=1)
    """Scale out when the P99 request latency exceeds this."""
    ttft_p99_ms: int | None = Field(default=None, ge=1)
    """Streamed answers: scale out when the P99 time to the first token exceeds this (the gateway's
    measure, else Triton's first-response histogram)."""


class ScaleFromZero(TollwayModel):
    """What the gateway does with a request for a model that has no ready replica (scaled to zero, or still
    waking): it holds the request, and the gateway's requests for the model, held or in flight, are the signal
    that wakes it and keeps one replica (README: "Scale from zero")."""

    hold_seconds: int = Field(default=60, ge=1, le=240)
    """The longest a request is held before it is answered 503 with Retry-After."""
    max_held_requests: int = Field(default=100, ge=1, le=10_000)
    """How many requests of each tier each gateway replica holds for the model at once (per tier, so that
    one tier's callers cannot take every tier's room); the tier's next is answered 503 at once, with
    Retry-After."""
    wake_seconds: int = Field(default=60, ge=1, le=3600)
    """The expected time from the first held request to a ready replica (pod start and model load): what a
    refused request's Retry-After counts down from (at least 5 s, or this if shorter, once it has passed)."""


class Autoscaling(TollwayModel):
    """Replica count driven by queue depth and tail latency."""

    rules = (
        Rule(
            field=".maxReplicas",
            message="maxReplicas must be ≥ minReplicas",
            cel="self.minReplicas <= self.maxReplicas",
            holds=lambda model: model.min_replicas <= model.max_replicas,
        ),
        Rule(
            field=".scaleFromZero",
            message="scaleFromZero applies only to a model with minReplicas: 0",
            cel="!has(self.scaleFromZero) || self.minReplicas == 0",
            holds=lambda model: model.scale_from_zero is None or model.min_replicas == 0,
        ),
    )

    engine: Literal["hpa", "keda"] = "hpa"
    min_replicas: int = Field(default=1, ge=0, le=1000)
    """0: the model scales to zero when idle, and the gateway wakes it when requests come (scaleFromZero).
    With engine hpa, the cluster's HPA must scale to zero: Kubernetes 1.37 or later (the HPAScaleToZero
    feature, on by default since) or that feature gate turned on; else the API server refuses the HPA and
    the model's status says so."""
    max_replicas: int = Field(default=1, ge=1, le=1000)
    targets: ScalingTargets = ScalingTargets()
    scale_up: ScalingBehavior = ScalingBehavior(stabilization_seconds=0)
    scale_down: ScalingBehavior = ScalingBehavior(stabilization_seconds=0)
    """0 by default: the utilization target holds what the load needs, and scale-down is limited to half the
    replicas a minute (README: "Why these defaults")."""
    scale_from_zero: ScaleFromZero | None = None
    """With minReplicas 0: how the gateway holds requests while the model wakes (the defaults when unset)."""


class Slo(TollwayModel):
    """Service-level objectives; they drive the burn-rate alerts."""

    rules = (
        Rule(
            field=".availability",
            message="availability must be a percentage above 0 and below 100",
            cel="double(self.availability) > 0.0 && double(self.availability) < 100.0",
            holds=lambda model: 0 < decimal(model.availability) < 100,
        ),
    )

    availability: DecimalString = "99.9"
    """Percent of requests answered without a 5xx over the window."""
    p99_latency_ms: int = Field(default=1000, ge=1)
    ttft_p99_ms: int | None = Field(default=None, ge=1, le=600_000)
    """Streamed answers: the P99 time to the first token, as the gateway measures it (Triton's own
    first-response histogram where the gateway has measured none); alerts like `p99LatencyMs`. Unset: no
    TTFT alert."""
    window_days: int = Field(default=30, ge=1, le=90)


class Monitoring(TollwayModel):
    rules = (
        Rule(
            field=".sampleRate",
            message="sampleRate must be between 0 and 1",
            cel="double(self.sampleRate) <= 1.0",
            holds=lambda model: decimal(model.sample_rate) <= 1,
        ),
    )

    sample_rate: DecimalString = "0"
    """Share of requests whose input and output are logged for quality review, from 0 to 1."""


def _versions_unique(spec: ModelDeploymentSpec) -> bool:
    listed = [entry.version for entry in spec.versions]
    return len(listed) == len(set(listed))


class ModelDeploymentSpec(TollwayModel):
    rules = (
        Rule(
            field=".versions",
            message="versions must be unique",
            cel="self.versions.all(v, self.versions.exists_one(w, w.version == v.version))",
            holds=_versions_unique,
        ),
        Rule(
            field=".aliases",
            message="every alias must name a version listed in spec.versions",
            cel="!has(self.aliases) "
            "|| self.aliases.all(a, self.versions.exists(v, v.version == self.aliases[a]))",
            holds=lambda spec: all(
                any(entry.version == target for entry in spec.versions) for target in spec.aliases.values()
            ),
        ),
        Rule(
            field=".aliases",
            message="alias names must be lower-case words (letters, digits, '-', starting with a letter)",
            cel=f"!has(self.aliases) || self.aliases.all(a, a.matches('{ALIAS_NAME}'))",
            holds=lambda spec: all(matches(ALIAS_NAME, alias) for alias in spec.aliases),
        ),
        Rule(
            field=".optimization.accelerator",
            message="accelerator tensorrt needs triton.gpus ≥ 1",
            cel="self.optimization.accelerator != 'tensorrt' || self.triton.gpus >= 1",
            holds=lambda spec: spec.optimization.accelerator != "tensorrt" or spec.triton.gpus >= 1,
        ),
        Rule(
            field=".triton.instanceGroups",
            message="an instance group of kind GPU needs triton.gpus ≥ 1",
            cel="self.triton.gpus >= 1 || !has(self.triton.instanceGroups) "
            "|| self.triton.instanceGroups.all(g, g.kind != 'GPU')",
            holds=lambda spec: (
                spec.triton.gpus >= 1 or all(group.kind != "GPU" for group in spec.triton.instance_groups)
            ),
        ),
        Rule(
            field=".cache.store",
            message="store shared needs a chat or completion model: Triton's own response cache, which "
            "every other model uses, is per pod",
            cel="self.cache.store != 'shared' "
            "|| (has(self.model.openai) && self.model.openai.kind in ['chat', 'completion'])",
            holds=lambda spec: spec.cache.store != "shared" or spec.model.streams,
        ),
        Rule(
            field=".batching.preferredBatchSizes",
            message="preferredBatchSizes must not exceed model.maxBatchSize",
            cel="!has(self.batching.preferredBatchSizes) "
            "|| self.batching.preferredBatchSizes.all(s, s <= self.model.maxBatchSize)",
            holds=lambda spec: all(
                size <= spec.model.max_batch_size for size in spec.batching.preferred_batch_sizes
            ),
        ),
        Rule(
            field=".model.name",
            message="a model that scales to zero (autoscaling.minReplicas 0) needs a name without '.': the "
            "gateway's count that wakes it is labelled from Envoy's statistics, whose names a '.' splits",
            cel="self.autoscaling.minReplicas != 0 "
            "|| !has(self.model.name) || !self.model.name.contains('.')",
            holds=lambda spec: spec.autoscaling.min_replicas != 0 or "." not in (spec.model.name or ""),
        ),
    )

    model: ModelSource
    versions: list[ModelVersion] = Field(min_length=1, max_length=32)
    """The versions Triton loads, and the gateway serves."""
    aliases: dict[str, VersionString] = Field(default_factory=dict, max_length=16)
    """Alias → version, for `/v1/models/MODEL:ALIAS/...`. Without a `latest` alias, the highest version
    is latest."""
    triton: Triton = Triton()
    batching: Batching = Batching()
    queue: QueuePolicy = QueuePolicy()
    cache: Cache = Cache()
    optimization: Optimization = Optimization()
    autoscaling: Autoscaling = Autoscaling()
    slo: Slo | None = None
    monitoring: Monitoring = Monitoring()
    cost: Cost | None = None
    """What serving the model costs, for its cost per token and the tiers' margins on it. Unset: no cost
    figures."""


class VersionStatus(TollwayModel):
    version: str
    state: Literal["Ready", "Loading", "Unavailable", "Unknown", "Sunset"]
    message: str = ""


class Endpoint(TollwayModel):
    """A public path of the gateway that reaches this model."""

    name: str
    """The alias, or "v" and the version for a pinned path."""
    version: str
    path: str


class LiveMetrics(TollwayModel):
    """Figures read from Prometheus; they keep their last value, with its time, when Prometheus is away."""

    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    queue_depth: float | None = None
    requests_per_second: float | None = None
    error_rate: float | None = None
    estimated_wait_seconds: float | None = None
    """Queue depth over the rate Triton completes requests: how long a new request waits before it runs."""
    observed_at: str | None = Field(default=None, json_schema_extra={"format": "date-time"})


class ModelDeploymentStatus(TollwayModel):
    observed_generation: int = 0
    conditions: Conditions = Field(default_factory=list)
    replicas: int = 0
    ready_replicas: int = 0
    endpoints: list[Endpoint] = Field(default_factory=list)
    versions: list[VersionStatus] = Field(default_factory=list)
    metrics: LiveMetrics | None = None
    cost: CostStatus | None = None


class ModelDeployment(Resource):
    """A model on Triton Inference Server: versions, aliases, GPUs, batching, queueing, scaling and SLOs."""

    kind_name = "ModelDeployment"
    plural = "modeldeployments"
    short_names = ("md",)
    printer_columns = (
        ready_column(),
        PrinterColumn(name="Replicas", type="integer", json_path=".status.readyReplicas"),
        PrinterColumn(name="P99", type="number", json_path=".status.metrics.p99Ms", description="P99 ms"),
        PrinterColumn(name="Queue", type="number", json_path=".status.metrics.queueDepth"),
        PrinterColumn(
            name="Cost/h",
            type="string",
            json_path=".status.cost.costPerHour",
            description="serving cost per hour",
        ),
        age_column(),
    )
    status_model = ModelDeploymentStatus

    kind: Literal["ModelDeployment"] = "ModelDeployment"
    spec: ModelDeploymentSpec

    @property
    def model_name(self) -> str:
        return self.spec.model.name or self.metadata.name
