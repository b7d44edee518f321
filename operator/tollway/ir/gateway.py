"""What the API gateway of one namespace serves: models, tiers and credentials, in the gateway's terms."""

from __future__ import annotations

from dataclasses import dataclass, field

from tollway.ir.serving import Owner
from tollway.ir.sla import Sla

LIMIT_KINDS = ("rpm", "rpd", "tpm", "tpd")
"""Requests per minute and per day, tokens per minute and per day: one ratelimit descriptor key each."""


@dataclass(frozen=True)
class Version:
    number: int
    announced: int | None = None
    """Unix seconds from which responses carry a Deprecation header."""
    sunset: int | None = None
    """Unix seconds from which the version answers 410 Gone."""
    link: str | None = None


@dataclass(frozen=True)
class Endpoint:
    """Where Triton serves a model: a host, or a name that resolves to each of its pods, and two ports."""

    host: str
    http_port: int
    grpc_port: int
    openai_port: int | None = None
    """Where the model's OpenAI server (`tollway openai-server`, beside Triton) listens, if it has one."""


@dataclass(frozen=True)
class Capacity:
    """What consumers are told of a model's room (GET /v1/capacity), from its status as last observed."""

    state: str = "unknown"
    """available (its replicas take requests without a queue), busy (requests wait, and it can scale out),
    at_capacity (requests wait and it runs its most replicas), idle (scaled to zero, or waking from it: a
    request waits while it wakes, its expected wake time the estimated wait), unavailable (no ready replica,
    and none coming soon: a model at zero whose pods cannot run, stuck or with no node that fits yet, is
    unavailable, not idle) or unknown (no figures
    yet)."""
    estimated_wait_seconds: float | None = None
    ready_replicas: int = 0
    max_replicas: int = 1
    observed_at: str | None = None


@dataclass(frozen=True)
class Hold:
    """How the gateway holds a model's requests while it has no ready replica (a model that scales to zero):
    spec.autoscaling.scaleFromZero."""

    seconds: int
    max_requests: int
    """Per tier that may call the model and gateway replica, at once."""
    wake_seconds: int


@dataclass(frozen=True)
class Model:
    name: str
    """The public name in routes, and Triton's model name."""
    endpoints: tuple[Endpoint, ...]
    """In a cluster, the model's headless Service (its DNS name resolves to every ready pod, so the gateway
    balances over the pods themselves); outside one, the addresses given."""
    versions: tuple[Version, ...]
    aliases: tuple[tuple[str, int], ...]
    """Alias → version, `latest` included."""
    input_tokens: str | None = None
    """The JSON key that reports input tokens in a response (the last part of spec.model.tokens.inputField);
    None when the model reports no tokens: its requests are then not charged tokens."""
    output_tokens: str | None = None
    usage_output: str | None = None
    """The output tensor that carries the token counts, added to any request's list of outputs."""
    default_max_tokens: int = 256
    max_request_bytes: int = 16 * 1024 * 1024
    """The largest body the gateway buffers for this model."""
    retry_after: int = 1
    """Seconds a client told "queue full" (Triton's 503) should wait: the model's estimated wait, rounded up
    to a few steps so the configuration changes rarely."""
    openai: OpenAIRoute | None = None
    """How the model answers on the OpenAI routes; None: it speaks KServe v2 only."""
    sample_rate: str = "0"
    """The share of its requests recorded for quality review (spec.monitoring.sampleRate), unless the
    caller's tier sets its own."""
    capacity: Capacity = field(default_factory=Capacity)
    """Published in a document of its own, which Envoy reads without a reload (never in its config)."""
    cost_currency: str | None = None
    """The currency of spec.cost, which the tiers' margins on the model are computed in; None: no cost."""
    hold: Hold | None = None
    """None: the model never scales to zero, and its requests go straight to it."""


@dataclass(frozen=True)
class OpenAIRoute:
    """A model's OpenAI side as the gateway sees it: which route it answers and how a request is charged."""

    kind: str
    """chat, completion or embedding (spec.model.openai.kind)."""
    default_max_tokens: int
    """What a request that asks for no max_tokens reserves for its answer (0 for embeddings)."""
    shared_cache: bool = False
    """Its answer cache is shared by every replica (spec.cache.store: shared), so what one replica says it
    holds, the replica that gets the request holds too."""


@dataclass(frozen=True)
class Redaction:
    """What sampled bodies have masked before a record leaves the gateway."""

    emails: bool = True
    cards: bool = True
    patterns: tuple[str, ...] = ()
    """Regular expressions of the kind render.redaction translates (translate keeps only those it can)."""


@dataclass(frozen=True)
class Sampling:
    """A tier's quality sampling: its own rate (None: each model's), how much of a body a record keeps,
    and what is masked in it."""

    rate: str | None = None
    max_body_bytes: int = 16384
    redaction: Redaction = field(default_factory=Redaction)


@dataclass(frozen=True)
class Guardrail:
    """A served model that judges prompts (its TEXT in, FLAGGED out), and how long it may take."""

    model: str
    timeout_ms: int = 250


@dataclass(frozen=True)
class PromptCheck:
    """A tier's check of its prompts, as the gateway runs it: a pattern, or a guardrail model."""

    name: str
    pattern: str | None = None
    """A Lua pattern (render.redaction.prompt_pattern), matched against the lower-cased prompt."""
    guardrail: Guardrail | None = None
    models: tuple[str, ...] = ()
    """The models whose prompts it checks; empty: all."""
    refuse: bool = False


NEW_KEY_SECONDS = 86_400
"""A key whose Secret is younger than this is counted per network as it is first used (sign-up farms)."""


@dataclass(frozen=True)
class KeySignals:
    """A tier's key-compromise signals (counted per consumer by the ratelimit service) and when their alert
    fires (api.api_tier.KeyCompromise)."""

    networks_per_hour: int = 10
    agents_per_hour: int = 5
    change_factor: float = 3.0
    new_network_share: float = 0.5
    new_keys_per_network: int = 5


@dataclass(frozen=True)
class Limit:
    """One fixed-window counter the ratelimit service keeps per consumer."""

    kind: str
    """One of LIMIT_KINDS."""
    scope: str
    """Whose counter: a tier ('pro', shared by the tier's models) or a tier and model ('pro/chat', a
    per-model override), each name as the counters write it (names.counter_name)."""
    value: int


@dataclass(frozen=True)
class ModelLimits:
    """What one tier's requests to one model are held to (only the limits that apply; none is unlimited)."""

    model: str
    limits: tuple[Limit, ...]
    token_cap: int | None = None
    """The smallest token limit: a request reserving more could never be served."""
    concurrent: int | None = None
    """Requests in flight across the gateway's replicas."""
    concurrent_per_replica: int | None = None
    """Each Envoy replica's share of `concurrent` (rounded up): what its circuit breaker admits."""


@dataclass(frozen=True)
class Jwt:
    issuer: str
    jwks_uri: str
    audiences: tuple[str, ...]
    consumer_claim: str
    required_scopes: tuple[str, ...]
    max_lifetime_seconds: int


@dataclass(frozen=True)
class Mtls:
    ca_pem: str
    allowed_sans: tuple[str, ...]
    """A trailing '*' matches the SANs below its prefix in whole path segments; empty allows any certificate
    that the CA signed."""
    crl_pem: str | None = None
    """The CA's revocation list, enforced by the tier's listener; None: none given."""


@dataclass(frozen=True)
class Tier:
    name: str
    priority_level: int
    """Triton's priority level for this tier's requests (1 is served first)."""
    limits: tuple[Limit, ...]
    """The tier's own limits (scope: the tier), whether or not a model is served yet."""
    model_limits: tuple[ModelLimits, ...]
    """Per served model: the limits its requests count against, overrides applied."""
    allowed: tuple[tuple[str, int], ...]
    """(model, version) pairs this tier may call, however the route names them."""
    fail_open: bool = True
    retry_after: bool = True
    jwt: Jwt | None = None
    mtls: Mtls | None = None
    mtls_port: int | None = None
    """The listener of this tier's mTLS clients: one per tier, trusting only the tier's CA."""
    currency: str = "USD"
    input_price_per_1k: str = "0"
    output_price_per_1k: str = "0"
    cached_price_per_1k: str | None = None
    """Every token of an answer from a model's answer cache; None: the input and output prices."""
    cache: bool = True
    """Whether the models' answer caches may serve and keep this tier's requests."""
    hits_limited: bool = True
    """Whether a shared answer cache's hits take from the tier's token limits (ApiTier
    spec.cache.hitsCountAgainstLimits)."""
    usage_spike_factor: float = 3.0
    near_limit_ratio: float = 0.9
    near_limit_hours: int = 3
    repeated_prompt_ratio: float = 0.5
    repeated_prompt_min_requests: int = 100
    sampling: Sampling = field(default_factory=Sampling)
    sla: Sla | None = None
    sla_latency_ms: int | None = None
    """The SLA's latency threshold: a bound of the gateway's envoy_tollway_sla_latency_ms histogram."""
    margin_models: tuple[str, ...] = ()
    """The models this tier's margin is computed on: those it may call whose cost is in its currency."""
    allowed_cidrs: tuple[str, ...] = ()
    """The networks its consumers must call from (normalised CIDRs); empty: anywhere."""
    per_ip_rpm: int | None = None
    """Requests per minute from one client address, across the tier's consumers."""
    prompt_checks: tuple[PromptCheck, ...] = ()
    key_signals: KeySignals | None = None
    """None: its consumers' networks and user agents are not counted."""

    def limits_for(self, model: str) -> ModelLimits:
        return next(
            (found for found in self.model_limits if found.model == model),
            ModelLimits(model=model, limits=()),
        )


@dataclass(frozen=True)
class Credential:
    id: str
    """The Secret's name: which credential a request used, never the key itself."""
    consumer: str
    tier: str
    key: str
    expires_at: int | None = None
    unverified: bool = False
    """Its tier serves verified keys only, and this one's Secret does not say it is verified."""
    suspended: str | None = None
    """Why the key is suspended (its Secret's label and reason annotation); None: it is not."""
    notify_webhook: str | None = None
    """Where its consumer's notices go (render.notices); None: to the platform team only."""
    created_at: int | None = None
    """When its Secret was created (Unix seconds): a key younger than NEW_KEY_SECONDS is a new key."""


@dataclass(frozen=True)
class Images:
    envoy: str = "envoyproxy/envoy:v1.40.0"
    ratelimit: str = "envoyproxy/ratelimit:3fb70258"
    redis: str = "redis:7.4-alpine"


TLS_DIR = "/etc/tollway/tls"
"""Where Envoy's pods mount the gateway's server certificate (the `tls_secret`)."""
CAPACITY_DIR = "/etc/tollway/capacity"
"""Where Envoy's pods mount the capacity document (its ConfigMap)."""
CAPACITY_FILE = "capacity.jsonl"
CAPACITY_REREAD_SECONDS = 5
"""How long each Envoy worker keeps what it read of the capacity document."""


@dataclass(frozen=True)
class Runtime:
    """How a gateway runs: the operator's settings or `tollway gateway-config`'s flags, not resources."""

    envoy_replicas: int = 2
    service_type: str = "ClusterIP"
    """The Kubernetes Service type of Envoy (ClusterIP, NodePort or LoadBalancer): how clients reach it."""
    redis_address: str | None = None
    """host:port of an existing Redis; None renders a single-replica Redis beside the gateway."""
    ratelimit_address: str | None = None
    """host:port of the ratelimit service's gRPC port; None is the one rendered beside the gateway."""
    jwks_ca_file: str = "/etc/ssl/certs/ca-certificates.crt"
    """The trust bundle Envoy checks JWKS servers against."""
    tls: tuple[str, str] | None = None
    """(certificate, key) files for the mTLS listeners, outside a cluster."""
    tls_secret: str | None = None
    """In a cluster: the kubernetes.io/tls Secret mounted at TLS_DIR; mTLS tiers need one of the two."""
    config_dir: str = "/etc/tollway/envoy"
    listen_port: int = 8080
    metrics_port: int = 9102
    """Envoy's Prometheus endpoint (/stats/prometheus), the only admin path served off 127.0.0.1."""
    admin_port: int = 9901
    """Envoy's admin interface, on 127.0.0.1 only."""
    mtls_port: int = 8443
    """The first mTLS tier's port; the others (in name order) follow it."""
    envoy_memory_bytes: int = 1024 * 1024 * 1024
    """Each Envoy's memory limit: its overload manager sheds load before its heap reaches it."""
    envoy_max_connections: int = 10_000
    """Client connections each Envoy holds at most (its metrics listener is not counted)."""
    monitoring: bool = True
    """Render ServiceMonitors and a PrometheusRule (when the cluster serves prometheus-operator's CRDs)."""
    alertmanager_configs: bool = False
    """Render the consumers' notice routes as an AlertmanagerConfig (when the cluster serves it)."""
    capacity_file: str = f"{CAPACITY_DIR}/{CAPACITY_FILE}"
    """Where Envoy reads the capacity document (a ConfigMap's file in a cluster: the kubelet swaps it in
    place, and the Lua program reads it again every few seconds)."""
    trusted_proxy_hops: int = 0
    """Proxies in front of Envoy (load balancers) that each append the address they saw to
    X-Forwarded-For: the client is the address that many entries from the header's right end. 0: the
    connection's peer is the client, whatever the header says."""
    trusted_proxy_cidrs: tuple[str, ...] = ()
    """Instead of a count: the networks of the proxy in front of Envoy. A request from one of them comes from
    the header's last address (what that proxy saw); from anywhere else, from the peer itself."""
    unauthenticated_rpm_per_ip: int | None = 60
    """Requests per minute from one client address that carry no valid credential (answered 429 beyond
    it, across the replicas): what credential stuffing and 401 floods get. None: no such limit."""
    sample_sink: str | None = None
    """host:port of an OTLP/gRPC logs receiver (an OpenTelemetry Collector) that takes the quality samples
    and feedback; None: nothing is sampled, and feedback is only counted."""
    images: Images = field(default_factory=Images)

    @property
    def certificate(self) -> tuple[str, str] | None:
        """The server certificate and key files of the mTLS listeners, if the gateway has one."""
        if self.tls:
            return self.tls
        return (f"{TLS_DIR}/tls.crt", f"{TLS_DIR}/tls.key") if self.tls_secret else None


@dataclass(frozen=True)
class Gateway:
    namespace: str
    name: str
    owners: tuple[Owner, ...]
    models: tuple[Model, ...]
    tiers: tuple[Tier, ...]
    credentials: tuple[Credential, ...]
    runtime: Runtime = field(default_factory=Runtime)
    denied_cidrs: tuple[str, ...] = ()
    """Networks refused outright (the namespace's deny-list Secrets), before anything else is read."""
