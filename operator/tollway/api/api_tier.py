"""ApiTier: a product tier (free, pro, enterprise…): limits, models, authentication, priority and prices."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from tollway.api.base import (
    Conditions,
    Currency,
    DecimalString,
    PrinterColumn,
    Resource,
    Rule,
    TollwayModel,
    age_column,
    decimal,
    matches,
    ready_column,
)
from tollway.api.model_deployment import MODEL_NAME
from tollway.api.sla import Sla, SlaStatus

_MODEL = MODEL_NAME.strip("^$")
#: "MODEL" (its latest alias), "MODEL:ALIAS", "MODEL@VERSION", or "*" (every model in the namespace).
MODEL_REFERENCE = f"^([*]|{_MODEL}(:[a-z][a-z0-9-]{{0,30}}|@[1-9][0-9]{{0,9}})?)$"

Positive = Annotated[int, Field(ge=1, json_schema_extra={"format": "int64"})]
Cidr = Annotated[str, StringConstraints(min_length=3, max_length=49)]
Names = Annotated[list[Annotated[str, StringConstraints(min_length=1, max_length=253)]], Field(max_length=64)]


class Quotas(TollwayModel):
    """Per-consumer limits; an unset limit is unlimited."""

    requests_per_minute: Positive | None = None
    tokens_per_minute: Positive | None = None
    """Input plus output tokens, as the model's responses report them. Each request reserves its estimate when
    admitted (the excess it uses is charged at its end); one that fails after that (an upstream error, a
    held request turned away) spends its reservation."""
    concurrent_requests: Positive | None = None
    """In-flight requests of the whole tier, per model. Each of the gateway's N Envoy replicas admits
    ceil(concurrentRequests / N) of them, so the cap holds while traffic is spread over the replicas."""
    requests_per_day: Positive | None = None
    tokens_per_day: Positive | None = None


class Limits(Quotas):
    fail_open: bool = True
    """When the rate-limit service or its Redis cannot answer: serve without limits (true) or refuse with
    500 (false)."""


class ModelOverride(Quotas):
    """Limits of this tier that differ for one model: each one set here replaces the tier's for this model
    (with a counter of its own); the others stay shared with the tier's other models."""

    model: Annotated[str, StringConstraints(max_length=63)]
    """A model name (spec.model.name of a ModelDeployment)."""


class SecretReference(TollwayModel):
    name: Annotated[str, StringConstraints(min_length=1, max_length=253)]


class LabelSelectorRequirement(TollwayModel):
    key: Annotated[str, StringConstraints(min_length=1, max_length=316)]
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: Names = Field(default_factory=list)


class LabelSelector(TollwayModel):
    """A Kubernetes label selector."""

    rules = (
        Rule(
            field="",
            message="secretSelector must not be empty (it would select every Secret in the namespace)",
            cel="(has(self.matchLabels) && size(self.matchLabels) > 0) "
            "|| (has(self.matchExpressions) && size(self.matchExpressions) > 0)",
            holds=lambda selector: bool(selector.match_labels or selector.match_expressions),
        ),
    )

    match_labels: dict[str, Annotated[str, StringConstraints(max_length=63)]] = Field(
        default_factory=dict, max_length=32
    )
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list, max_length=32)


class ApiKeyAuth(TollwayModel):
    secret_selector: LabelSelector
    """Secrets with the data key `api-key`. The consumer is the Secret's name, or its label
    `tollway.dev/consumer` (two Secrets of one consumer: key rotation with overlap). The annotation
    `tollway.dev/expires-at` (RFC 3339) makes a key stop working at that time."""
    require_verified: bool = False
    """Serve only keys whose Secret carries the label `tollway.dev/verified: "true"`, which a billing
    system sets once the customer's payment is verified; any other key of this tier is answered 403 with
    a message that says its account is not verified yet."""
    suspend_on_compromise: bool = False
    """When TollwayKeyPatternChanged fires for one of this tier's keys (see alerts.keyCompromise), the
    operator labels its Secret `tollway.dev/suspended: "true"` (the reason in the annotation
    `tollway.dev/suspended-reason`): the gateway answers its requests 401 with a message that says so.
    A person lifts it by setting the label to "lifted"; once the alert has stopped, the operator removes
    that label and watches the key again."""


class JwtAuth(TollwayModel):
    issuer: Annotated[str, StringConstraints(min_length=1, max_length=2048)]
    jwks_uri: Annotated[str, StringConstraints(pattern="^https://", max_length=2048)]
    audiences: Names = Field(default_factory=list)
    consumer_claim: Annotated[str, StringConstraints(min_length=1, max_length=128)] = "sub"
    """The claim whose value names the consumer: a string or a number (a token whose claim is anything else
    is refused)."""
    required_scopes: Names = Field(default_factory=list)
    max_lifetime_seconds: int = Field(default=86400, ge=60, le=31_536_000)
    """The longest a token may still be valid (its `exp` minus now) when presented; a token with no `exp`,
    or one valid for longer, is refused: a leaked long-lived token would be a credential nobody can
    revoke."""


class MtlsAuth(TollwayModel):
    ca_secret_ref: SecretReference
    """A Secret whose `ca.crt` signs the client certificates; its optional `ca.crl` (PEM, that CA's
    certificate revocation list) makes the tier's listener refuse the certificates it revokes. With a CRL
    every CA of a client's chain needs one, or the handshake fails."""
    allowed_subject_alt_names: Annotated[
        list[Annotated[str, StringConstraints(min_length=1, max_length=512)]], Field(max_length=64)
    ] = Field(default_factory=list)
    """SANs allowed in; a trailing '*' matches the SANs below that prefix in whole path segments
    ('spiffe://a.test/*' takes 'spiffe://a.test/x', never 'spiffe://a.test.evil/x'). The matching SAN is
    the consumer. Empty: any certificate the CA signed (its first SAN is the consumer)."""


class Auth(TollwayModel):
    """How consumers of this tier authenticate; at least one method."""

    rules = (
        Rule(
            field="",
            message="auth needs at least one of apiKeys, jwt, mtls",
            cel="has(self.apiKeys) || has(self.jwt) || has(self.mtls)",
            holds=lambda auth: any(method is not None for method in (auth.api_keys, auth.jwt, auth.mtls)),
        ),
    )

    api_keys: ApiKeyAuth | None = None
    jwt: JwtAuth | None = None
    mtls: MtlsAuth | None = None


class Pricing(TollwayModel):
    """Prices per 1,000 tokens, for the usage and cost figures."""

    currency: Currency = "USD"
    input_per1k_tokens: DecimalString = Field(default="0", alias="inputPer1kTokens")
    output_per1k_tokens: DecimalString = Field(default="0", alias="outputPer1kTokens")
    cached_per1k_tokens: DecimalString | None = Field(default=None, alias="cachedPer1kTokens")
    """The price of every token (prompt and completion) of an answer served from a model's answer cache.
    Unset: the input and output prices, as for an answer the model made."""


class TierCache(TollwayModel):
    """How the models' answer caches (ModelDeployment spec.cache) treat this tier's requests."""

    rules = (
        Rule(
            field=".hitsCountAgainstLimits",
            message="hitsCountAgainstLimits: false needs enabled: true (a tier without caches has no hits)",
            cel="self.enabled || !has(self.hitsCountAgainstLimits) || self.hitsCountAgainstLimits",
            holds=lambda cache: cache.enabled or cache.hits_count_against_limits,
        ),
    )

    enabled: bool = True
    """False: this tier's requests are never answered from a cache nor fill one (data that must not be
    shared through a cache). Its answers then say `x-tollway-cache: off`."""
    hits_count_against_limits: bool = Field(default=True, alias="hitsCountAgainstLimits")
    """False: a request that a model's shared answer cache (`store: shared`) will answer takes nothing from
    this tier's token limits, and is served even when they are spent; it still counts as a request, and its
    tokens are metered and billed (at `pricing.cachedPer1kTokens`). The gateway asks the model's server
    before reserving tokens, one extra call per request to such a model. A pod cache is per replica, so its
    hits always count."""


class OverLimit(TollwayModel):
    retry_after: bool = True
    """429 responses carry Retry-After."""


class KeyCompromise(TollwayModel):
    """Signs that a key is used by someone besides its owner, counted per consumer by the ratelimit
    service (no limit: each first sighting of a network or user agent within the period): the distinct client
    networks (/24 for IPv4, /48 for IPv6) and user agents per hour, and the networks never seen for the
    key this month. TollwayKeyPatternChanged fires when a key's networks (or agents) in the last hour pass
    both the floor and `changeFactor` times its own hourly average of the week before, and at least
    `newNetworkShare` of those networks are new to it (agents: no share). TollwayNewKeysFromOneNetwork fires
    when more than `newKeysPerNetworkPerHour` keys created in the last day were first used from one network
    within an hour: a farm of sign-ups."""

    enabled: bool = True
    """Count the signals: one more call to the ratelimit service per request, when it ends (never in the
    way of the answer)."""
    networks_per_hour: int = Field(default=10, ge=2, le=1_000_000)
    agents_per_hour: int = Field(default=5, ge=2, le=1_000_000)
    change_factor: float = Field(default=3.0, ge=1.0, le=1000.0)
    new_network_share: float = Field(default=0.5, ge=0.0, le=1.0)
    new_keys_per_network_per_hour: int = Field(default=5, ge=1, le=1_000_000)


class UsageAlerts(TollwayModel):
    """When the alerts on this tier's consumers fire: usage spikes, and the patterns of scraping and
    automation."""

    usage_spike_factor: float = Field(default=3.0, ge=1.0, le=1000.0)
    """Alert when a consumer's rate exceeds this many times its 7-day baseline."""
    near_limit_ratio: float = Field(default=0.9, ge=0.5, le=1.0)
    """Alert (TollwayConsumerNearLimit) when a consumer runs at this share of the tier's requests or tokens
    per minute without a break for `nearLimitHours`: a scraper paces itself just under the limit."""
    near_limit_hours: int = Field(default=3, ge=1, le=72)
    repeated_prompt_ratio: float = Field(default=0.5, ge=0.05, le=1.0)
    """Alert (TollwayConsumerRepeatsPrompts) when this share of a consumer's requests in an hour send a prompt
    it sent to the same model version minutes before, with at least `repeatedPromptMinRequests` requests
    in that hour: automation, not people regenerating an answer now and then."""
    repeated_prompt_min_requests: int = Field(default=100, ge=1, le=1_000_000)
    key_compromise: KeyCompromise = KeyCompromise()


class Redaction(TollwayModel):
    """What the gateway masks (as `[REDACTED]`) in sampled bodies before a record leaves it. Credentials
    are never part of a record: headers are not sampled."""

    emails: bool = True
    card_numbers: bool = True
    """Runs of 13 to 19 digits, spaces or dashes between them allowed (payment card numbers)."""
    patterns: Annotated[
        list[Annotated[str, StringConstraints(min_length=1, max_length=256)]], Field(max_length=32)
    ] = Field(default_factory=list)
    """More to mask, each a regular expression of a bounded kind that the gateway can run on every sampled
    body in linear time: literals, `.`, character classes (`[a-z0-9_]`, `[^,]`), escapes (`\\d \\w \\s`, their
    negations and escaped punctuation), the quantifiers `* + ?` and `{n}`, `{n,m}` (m ≤ 64) on a single
    character or class, and the anchors `^ $`; no groups or alternation (a pattern per alternative
    instead). A pattern outside that is reported in the tier's conditions and masks nothing."""


def is_cidr(value: str) -> bool:
    """CEL's isCIDR: an IPv4 or IPv6 address, '/', a prefix length (host bits may be set)."""
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return "/" in value


class PromptCheck(TollwayModel):
    """A pattern the gateway looks for in each prompt of this tier (every string of a JSON body, escapes
    decoded, and the raw bytes of a binary one), or a guardrail model it asks about the prompt, before the
    request reaches the model."""

    rules = (
        Rule(
            field="",
            message="a prompt check has exactly one of pattern and guardrailModel",
            cel="has(self.pattern) != has(self.guardrailModel)",
            holds=lambda check: (check.pattern is None) != (check.guardrail_model is None),
        ),
    )

    name: Annotated[str, StringConstraints(pattern="^[a-z0-9][a-z0-9_-]{0,62}$")]
    """Names the check in the counter envoy_tollway_prompt_matches{pattern=...} and in sampled records."""
    pattern: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None
    """A regular expression of the kind sampling's redaction patterns take, matched without regard to ASCII
    case, with one more bound so that no body can make it slow: a repetition (`* + {n,}`, at most one) must
    repeat a class that cannot match the pattern's first character, which must be a plain character
    (`ignore\\s+previous`, not `.*ignore`). A pattern outside that is reported in the tier's conditions and
    checks nothing."""
    models: Annotated[list[Annotated[str, StringConstraints(max_length=63)]], Field(max_length=64)] = Field(
        default_factory=list
    )
    """The models whose prompts it checks (spec.model.name); empty: all of the tier's."""
    guardrail_model: Annotated[str, StringConstraints(pattern=MODEL_NAME, max_length=63)] | None = None
    """Instead of a pattern: a ModelDeployment of this namespace (spec.model.name) that judges the prompt.
    The gateway sends it, over KServe v2 HTTP, the input TEXT (BYTES, dims [1], as a batch of one: shape
    [1, 1]; the prompt as the patterns read it, before lower-casing) and reads its output FLAGGED (a boolean
    or a number, non-zero: flagged).
    The call is the platform's, never the consumer's: it is neither limited nor metered."""
    timeout_ms: int = Field(default=250, ge=10, le=10_000)
    """How long a guardrail model may take. A prompt it could not judge in time (or at all, or longer than
    its maxRequestBytes) is refused 503 by a refusing check, and passed by one that only counts; either way
    it is counted as the check's error (envoy_tollway_prompt_check_errors)."""
    refuse: bool = False
    """Answer a matching request 400 instead of passing it on (it is counted and flagged either way)."""


class Network(TollwayModel):
    """Where this tier's requests may come from, and how many one client address may send. The client
    address is the one the gateway trusts (see the operator's --trusted-proxy-hops), never one a client
    wrote into X-Forwarded-For."""

    rules = (
        Rule(
            field=".allowedCidrs",
            message="allowedCidrs entries must be CIDR ranges, such as 203.0.113.0/24 or 2001:db8::/32",
            cel="!has(self.allowedCidrs) || self.allowedCidrs.all(c, isCIDR(c))",
            holds=lambda network: all(is_cidr(cidr) for cidr in network.allowed_cidrs),
        ),
    )

    allowed_cidrs: list[Cidr] = Field(default_factory=list, max_length=256)
    """The networks this tier's consumers must call from (e.g. an enterprise customer's egress); a request
    of the tier from anywhere else is answered 403. Empty: anywhere."""
    requests_per_minute_per_ip: Positive | None = None
    """Requests per minute from one client address, across all of the tier's consumers and the gateway's
    replicas (answered 429 beyond it): a bound on what one network can do with many keys."""


class Sampling(TollwayModel):
    """Quality sampling of this tier's requests (records go to the gateway's sample sink, over OTLP)."""

    rules = (
        Rule(
            field=".sampleRate",
            message="sampleRate must be between 0 and 1",
            cel="!has(self.sampleRate) || double(self.sampleRate) <= 1.0",
            holds=lambda sampling: sampling.sample_rate is None or decimal(sampling.sample_rate) <= 1,
        ),
    )

    sample_rate: DecimalString | None = None
    """Replaces each model's `spec.monitoring.sampleRate` for this tier's requests ("0": never sample them,
    e.g. a tier whose data must not be kept). Unset: the model's rate."""
    max_body_bytes: int = Field(default=16384, ge=256, le=262144)
    """The most of each body (request and response) a record keeps; the record says when it was cut."""
    redact: Redaction = Redaction()


class ApiTierSpec(TollwayModel):
    rules = (
        Rule(
            field=".models",
            message='models entries must be "MODEL", "MODEL:ALIAS", "MODEL@VERSION" or "*"',
            cel=f"self.models.all(m, m.matches('{MODEL_REFERENCE}'))",
            holds=lambda spec: all(matches(MODEL_REFERENCE, model) for model in spec.models),
        ),
        Rule(
            field=".overrides",
            message="overrides[].model must be a model name that spec.models allows",
            cel=f"!has(self.overrides) || self.overrides.all(o, o.model.matches('{MODEL_NAME}') && "
            "self.models.exists(m, m == '*' || m == o.model || m.startsWith(o.model + ':') "
            "|| m.startsWith(o.model + '@')))",
            holds=lambda spec: all(
                matches(MODEL_NAME, override.model)
                and any(
                    allowed in ("*", override.model)
                    or allowed.startswith((override.model + ":", override.model + "@"))
                    for allowed in spec.models
                )
                for override in spec.overrides
            ),
        ),
        Rule(
            field=".overrides",
            message="overrides must name each model once",
            cel="!has(self.overrides) || "
            "self.overrides.all(o, self.overrides.exists_one(p, p.model == o.model))",
            holds=lambda spec: len({override.model for override in spec.overrides}) == len(spec.overrides),
        ),
    )

    display_name: Annotated[str, StringConstraints(max_length=128)] | None = None
    priority: int = Field(default=10, ge=1, le=10)
    """Triton queue priority of this tier's requests; 1 is served first when GPUs are saturated."""
    limits: Limits = Limits()
    models: list[Annotated[str, StringConstraints(max_length=80)]] = Field(min_length=1, max_length=64)
    """Models this tier may call: "MODEL" (its latest alias), "MODEL:ALIAS", "MODEL@VERSION", or "*"."""
    overrides: list[ModelOverride] = Field(
        default_factory=list,
        max_length=64,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["model"]},
    )
    auth: Auth
    pricing: Pricing = Pricing()
    cache: TierCache = TierCache()
    over_limit: OverLimit = OverLimit()
    alerts: UsageAlerts = UsageAlerts()
    sampling: Sampling = Sampling()
    network: Network = Network()
    prompt_checks: list[PromptCheck] = Field(
        default_factory=list,
        max_length=32,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    """Patterns looked for in the prompts of this tier's requests (prompt injection, forbidden content):
    each match is counted per model, version and tier, flagged in the request's quality sample, and, for a
    check that says so, refused."""
    sla: Sla | None = None
    """The service level promised to each customer of this tier, and the credits owed when it is missed."""


class Usage(TollwayModel):
    """The tier's use today (since 00:00 UTC), from the gateway's counters in Prometheus."""

    consumers: int = 0
    """Consumers that sent at least one request today."""
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: DecimalString = "0"
    """Input and output tokens at the tier's prices."""
    currency: Currency = "USD"
    observed_at: str | None = Field(default=None, json_schema_extra={"format": "date-time"})


class ApiTierStatus(TollwayModel):
    observed_generation: int = 0
    conditions: Conditions = Field(default_factory=list)
    consumers: int = 0
    """Consumers with a live API key for this tier (JWT and mTLS consumers are not known in advance)."""
    suspended_keys: int = 0
    """API keys of this tier suspended now (label `tollway.dev/suspended: "true"` on their Secrets)."""
    mtls_port: int | None = None
    """The gateway port of this tier's mTLS clients (one listener per mTLS tier, trusting only its CA)."""
    usage: Usage | None = None
    sla: SlaStatus | None = None


class ApiTier(Resource):
    """A product tier: limits per consumer, allowed models, authentication, priority and prices."""

    kind_name = "ApiTier"
    plural = "apitiers"
    short_names = ("tier",)
    printer_columns = (
        PrinterColumn(name="RPM", type="integer", json_path=".spec.limits.requestsPerMinute"),
        PrinterColumn(name="TPM", type="integer", json_path=".spec.limits.tokensPerMinute"),
        PrinterColumn(name="Concurrency", type="integer", json_path=".spec.limits.concurrentRequests"),
        PrinterColumn(name="Consumers", type="integer", json_path=".status.consumers"),
        PrinterColumn(
            name="SLA",
            type="string",
            json_path=".status.sla.availability",
            description="availability this month, %",
        ),
        ready_column(),
        age_column(),
    )
    status_model = ApiTierStatus

    kind: Literal["ApiTier"] = "ApiTier"
    spec: ApiTierSpec
