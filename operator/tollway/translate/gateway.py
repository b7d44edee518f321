"""ApiTiers, ModelDeployments and API-key Secrets of one namespace → the Gateway IR and each tier's status.

One gateway per namespace: tiers name models by their names in the same namespace, the API-key Secrets
live there, and a team that owns a namespace owns its API product (its keys, prices and limits) without
seeing another team's. Invalid tiers and models are left out (their own status says why); the others are
served, so one bad object never takes the rest of the namespace's API down.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from tollway.api import API_VERSION, ApiTier, ModelDeployment
from tollway.api.api_tier import KeyCompromise, LabelSelector, Quotas
from tollway.api.api_tier import Sampling as SamplingSpec
from tollway.api.model_deployment import ScaleFromZero
from tollway.ir.gateway import (
    LIMIT_KINDS,
    Capacity,
    Credential,
    Endpoint,
    Gateway,
    Guardrail,
    Hold,
    Jwt,
    KeySignals,
    Limit,
    Model,
    ModelLimits,
    Mtls,
    OpenAIRoute,
    PromptCheck,
    Redaction,
    Runtime,
    Sampling,
    Tier,
    Version,
)
from tollway.ir.names import (
    GATEWAY_NAME,
    OPENAI_PORT,
    TRITON_GRPC_PORT,
    TRITON_HTTP_PORT,
    counter_name,
    in_cluster_host,
    serving_children,
)
from tollway.ir.serving import Owner
from tollway.render.redaction import UnsupportedPattern, lua_pattern, prompt_pattern
from tollway.translate.cost import margin_models
from tollway.translate.model_deployment import latest_version
from tollway.translate.serving import caches_answers, epoch, openai_max_tokens, priority_levels
from tollway.translate.sla import plan_sla

API_KEY = "api-key"
CONSUMER_LABEL = "tollway.dev/consumer"
EXPIRES_ANNOTATION = "tollway.dev/expires-at"
VERIFIED_LABEL = "tollway.dev/verified"
"""On an API key's Secret, "true": the customer is verified (what a tier with requireVerified serves)."""
SUSPENDED_LABEL = "tollway.dev/suspended"
"""On an API key's Secret: "true", suspended (the gateway answers 401); "lifted", a person lifted the
operator's suspension (left alone until its alert stops, then the label goes)."""
SUSPENDED_REASON = "tollway.dev/suspended-reason"
"""On a suspended key's Secret: why, as the operator wrote it (and part of the 401's message)."""
NOTIFY_ANNOTATION = "tollway.dev/notify-webhook"
"""On an API key's Secret: an http(s) URL that gets this consumer's notices (Alertmanager's webhook JSON):
its usage spikes, running near its limits, and its key's compromise signals and suspension."""
DENY_LIST_LABEL = "tollway.dev/deny-list"
"""On a Secret of the namespace, "true": its data key DENY_LIST_KEY lists networks the gateway refuses."""
DENY_LIST_KEY = "cidrs"


@dataclass(frozen=True)
class GatewayOptions:
    """How the gateway is run: from the operator's settings, or `tollway gateway-config`'s flags."""

    runtime: Runtime = field(default_factory=Runtime)
    upstreams: Mapping[str, tuple[Endpoint, ...]] = field(default_factory=dict)
    """Model → where its Tritons listen, replacing its Services (tests and local runs)."""


@dataclass(frozen=True)
class TierReport:
    """What the gateway makes of one tier, for its status."""

    consumers: int = 0
    problems: tuple[str, ...] = ()
    mtls_port: int | None = None
    suspended_keys: int = 0


@dataclass(frozen=True)
class GatewayPlan:
    gateway: Gateway | None
    """None when the namespace has no valid tier: no gateway at all."""
    reports: dict[str, TierReport]


#: The steps an estimated wait is rounded up to, for Retry-After.
RETRY_STEPS = (1, 2, 5, 10, 30, 60, 120, 300)


def retry_after(estimated_wait_seconds: float | None) -> int:
    """The smallest step at or above the estimate (the last step for anything longer); 1 without one."""
    if estimated_wait_seconds is None:
        return RETRY_STEPS[0]
    return next((step for step in RETRY_STEPS if step >= estimated_wait_seconds), RETRY_STEPS[-1])


def model_capacity(document: Mapping[str, Any]) -> Capacity:
    """A ModelDeployment's room, from its status: its ready replicas against its most, and its queue."""
    status = document.get("status") or {}
    metrics = status.get("metrics") or {}
    autoscaling = (document.get("spec") or {}).get("autoscaling") or {}
    ready, most = int(status.get("readyReplicas") or 0), int(autoscaling.get("maxReplicas") or 1)
    wait, queue = metrics.get("estimatedWaitSeconds"), metrics.get("queueDepth")
    if ready == 0 and autoscaling.get("minReplicas") == 0 and status and not _degraded(status):
        state = "idle"  # asleep, or waking: a request waits while it wakes
        wait = (autoscaling.get("scaleFromZero") or {}).get("wakeSeconds", ScaleFromZero().wake_seconds)
    elif not metrics.get("observedAt"):
        state = "unavailable" if status and ready == 0 else "unknown"
    elif ready == 0:
        state = "unavailable"
    elif not queue:
        state = "available"
    else:
        state = "at_capacity" if ready >= most else "busy"
    return Capacity(
        state=state,
        estimated_wait_seconds=round(float(wait), 1) if wait is not None else None,
        ready_replicas=ready,
        max_replicas=most,
        observed_at=metrics.get("observedAt"),
    )


def _degraded(status: Mapping[str, Any]) -> bool:
    """Whether the model's pods cannot run (the Degraded condition: a pod stuck, no node that fits, a
    stalled rollout, a version that failed): a wake that will not come."""
    conditions = status.get("conditions") or []
    return any(item.get("type") == "Degraded" and item.get("status") == "True" for item in conditions)


def plan_gateway(
    namespace: str,
    *,
    tiers: Sequence[ApiTier],
    models: Sequence[ModelDeployment],
    secrets: Sequence[Mapping[str, Any]],
    now: datetime,
    options: GatewayOptions = GatewayOptions(),
    waits: Mapping[str, float] | None = None,
    capacities: Mapping[str, Capacity] | None = None,
) -> GatewayPlan:
    """The namespace's gateway from its valid tiers and models and all of its Secrets; `waits` are the
    models' estimated waits (status.metrics.estimatedWaitSeconds) and `capacities` what consumers are told
    of their room (model_capacity), by ModelDeployment name."""
    ordered = sorted(tiers, key=lambda tier: (tier.spec.priority, tier.metadata.name))
    # By name: callers hold models in whatever order they were listed or cached (kopf's differs after every
    # restart), and the routes and clusters follow this order.
    served = tuple(
        replace(
            _model(resource, namespace, options),
            retry_after=retry_after((waits or {}).get(resource.metadata.name)),
            capacity=(capacities or {}).get(resource.metadata.name, Capacity()),
        )
        for resource in sorted(models, key=lambda model: model.metadata.name)
    )
    levels = priority_levels(tier.spec.priority for tier in ordered)
    problems: dict[str, list[str]] = {tier.metadata.name: [] for tier in ordered}
    built = []
    for resource in ordered:
        allowed, unknown = _allowed(resource, served)
        problems[resource.metadata.name] += unknown
        built.append(
            _tier(
                resource,
                level=levels[resource.spec.priority],
                allowed=allowed,
                served=served,
                options=options,
                secrets=secrets,
                problems=problems,
            )
        )
    built = _with_mtls_ports(built, options, problems)
    credentials, counts = _credentials(ordered, secrets, now, problems)
    suspended = Counter(credential.tier for credential in credentials if credential.suspended is not None)
    denied, unreadable = denied_networks(secrets)
    for found in problems.values():
        found.extend(unreadable)  # the namespace's deny list is every tier's concern
    ports = {tier.name: tier.mtls_port for tier in built}
    reports = {
        name: TierReport(
            consumers=counts.get(name, 0),
            problems=tuple(found),
            mtls_port=ports.get(name),
            suspended_keys=suspended[name],
        )
        for name, found in problems.items()
    }
    if not ordered:
        return GatewayPlan(gateway=None, reports=reports)
    owners = tuple(
        Owner(api_version=API_VERSION, kind=ApiTier.kind_name, name=tier.metadata.name, uid=tier.metadata.uid)
        for tier in ordered
    )
    built_gateway = Gateway(
        namespace=namespace,
        name=GATEWAY_NAME,
        owners=owners,
        models=served,
        tiers=tuple(built),
        credentials=credentials,
        runtime=options.runtime,
        denied_cidrs=denied,
    )
    return GatewayPlan(gateway=built_gateway, reports=reports)


def denied_networks(secrets: Iterable[Mapping[str, Any]]) -> tuple[tuple[str, ...], list[str]]:
    """The networks of the namespace's deny-list Secrets (one address or CIDR range a line, '#' starts a
    comment), normalised and merged, and one problem per line that is neither. A reputation feed rewrites
    such a Secret; the gateway applies the change without a restart."""
    networks: set[ipaddress.IPv4Network | ipaddress.IPv6Network] = set()
    problems = []
    for secret in sorted(secrets, key=lambda secret: str(secret["metadata"]["name"])):
        if (secret["metadata"].get("labels") or {}).get(DENY_LIST_LABEL) != "true":
            continue
        name = secret["metadata"]["name"]
        text = _decoded(secret, DENY_LIST_KEY)
        if text is None:
            problems.append(f'deny list Secret "{name}": no data key "{DENY_LIST_KEY}"; it denies nothing')
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            entry = line.split("#", 1)[0].strip()
            if not entry:
                continue
            try:
                networks.add(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                problems.append(f'deny list Secret "{name}", line {number}: {entry!r} is no address or CIDR')
    ordered = sorted(networks, key=lambda network: (network.version, network))
    return tuple(str(network) for network in ordered), problems


def _with_mtls_ports(
    tiers: list[Tier], options: GatewayOptions, problems: dict[str, list[str]]
) -> list[Tier]:
    """A port for each mTLS tier, in name order, when the gateway has a server certificate to serve them."""
    mtls = sorted(tier.name for tier in tiers if tier.mtls)
    if mtls and options.runtime.certificate is None:
        for name in mtls:
            problems[name].append(
                "spec.auth.mtls: the gateway has no server certificate (operator flag --gateway-tls-secret), "
                "so no mTLS listener serves this tier"
            )
        return tiers
    ports = {name: options.runtime.mtls_port + index for index, name in enumerate(mtls)}
    return [replace(tier, mtls_port=ports.get(tier.name)) for tier in tiers]


def _model(resource: ModelDeployment, namespace: str, options: GatewayOptions) -> Model:
    spec = resource.spec
    pods = serving_children(resource.metadata.name)["pods"]
    api = spec.model.openai
    endpoints = options.upstreams.get(resource.model_name) or (
        Endpoint(
            in_cluster_host(pods, namespace),
            TRITON_HTTP_PORT,
            TRITON_GRPC_PORT,
            OPENAI_PORT if api else None,
        ),
    )
    versions = tuple(
        Version(
            number=int(entry.version),
            announced=epoch(entry.deprecation.announced) if entry.deprecation else None,
            sunset=epoch(entry.deprecation.sunset)
            if entry.deprecation and entry.deprecation.sunset
            else None,
            link=entry.deprecation.link if entry.deprecation else None,
        )
        for entry in sorted(spec.versions, key=lambda entry: int(entry.version), reverse=True)
    )
    aliases = {**spec.aliases, "latest": latest_version(resource)}
    tokens = spec.model.tokens
    wake = spec.autoscaling.scale_from_zero or ScaleFromZero()
    hold = (
        Hold(wake.hold_seconds, wake.max_held_requests, wake.wake_seconds)
        if spec.autoscaling.min_replicas == 0
        else None
    )
    return Model(
        name=resource.model_name,
        endpoints=endpoints,
        versions=versions,
        aliases=tuple(sorted((alias, int(version)) for alias, version in aliases.items())),
        input_tokens=tokens.input_field.rsplit(".", 1)[-1] if tokens else None,
        output_tokens=tokens.output_field.rsplit(".", 1)[-1] if tokens else None,
        usage_output=tokens.usage_output if tokens else None,
        default_max_tokens=tokens.default_max_tokens if tokens else 0,
        max_request_bytes=spec.model.max_request_bytes,
        openai=OpenAIRoute(
            kind=api.kind,
            default_max_tokens=0 if api.kind == "embedding" else openai_max_tokens(resource),
            shared_cache=caches_answers(resource) and spec.cache.store == "shared",
        )
        if api
        else None,
        sample_rate=spec.monitoring.sample_rate,
        cost_currency=spec.cost.currency if spec.cost else None,
        hold=hold,
    )


def _allowed(tier: ApiTier, models: Sequence[Model]) -> tuple[tuple[tuple[str, int], ...], list[str]]:
    """The (model, version) pairs the tier's `models` entries grant, and one problem per entry that names
    nothing served in the namespace."""
    by_name = {model.name: model for model in models}
    allowed: set[tuple[str, int]] = set()
    unknown = []
    for index, reference in enumerate(tier.spec.models):
        if reference == "*":
            allowed |= {(model.name, version.number) for model in models for version in model.versions}
            continue
        name, alias, pinned = _split(reference)
        model = by_name.get(name)
        if model is None:
            unknown.append(
                f'spec.models[{index}]: no ModelDeployment in this namespace serves model "{name}"'
            )
            continue
        if pinned is not None:
            if pinned not in {version.number for version in model.versions}:
                unknown.append(f'spec.models[{index}]: model "{name}" has no version {pinned}')
                continue
            allowed.add((name, pinned))
            continue
        version = dict(model.aliases).get(alias)
        if version is None:
            unknown.append(f'spec.models[{index}]: model "{name}" has no alias "{alias}"')
            continue
        allowed.add((name, version))
    return tuple(sorted(allowed)), unknown


def _split(reference: str) -> tuple[str, str, int | None]:
    """'chat' → ('chat', 'latest', None); 'chat:stable' → alias; 'chat@2' → pinned version 2."""
    if "@" in reference:
        name, _, version = reference.partition("@")
        return name, "", int(version)
    name, _, alias = reference.partition(":")
    return name, alias or "latest", None


def _set_limits(limits: Quotas) -> dict[str, int]:
    """The per-consumer limits of a spec.limits or spec.overrides entry that are set, by LIMIT_KINDS name."""
    values = {
        "rpm": limits.requests_per_minute,
        "rpd": limits.requests_per_day,
        "tpm": limits.tokens_per_minute,
        "tpd": limits.tokens_per_day,
    }
    return {kind: value for kind, value in values.items() if value is not None}


def _model_limits(tier: ApiTier, model: str, replicas: int) -> ModelLimits:
    """Each limit an override sets counts per tier and model ('pro/chat'); the others are the tier's own,
    shared by its models ('pro'). Concurrency is capped per tier and model, each Envoy replica admitting
    its share."""
    name, spec = tier.metadata.name, tier.spec
    override = next((entry for entry in spec.overrides if entry.model == model), None)
    own, overridden = _set_limits(spec.limits), _set_limits(override) if override else {}
    limits = tuple(
        Limit(kind=kind, scope=f"{counter_name(name)}/{counter_name(model)}", value=overridden[kind])
        if kind in overridden
        else Limit(kind=kind, scope=counter_name(name), value=own[kind])
        for kind in LIMIT_KINDS
        if kind in overridden or kind in own
    )
    tokens = [limit.value for limit in limits if limit.kind in ("tpm", "tpd")]
    concurrent = (override.concurrent_requests if override else None) or spec.limits.concurrent_requests
    return ModelLimits(
        model=model,
        limits=limits,
        token_cap=min(tokens) if tokens else None,
        concurrent=concurrent,
        concurrent_per_replica=math.ceil(concurrent / replicas) if concurrent is not None else None,
    )


def _sampling(spec: SamplingSpec, problems: list[str]) -> Sampling:
    """The tier's sampling, with only the redaction patterns the gateway can run (one problem each other)."""
    patterns = []
    for index, pattern in enumerate(spec.redact.patterns):
        try:
            lua_pattern(pattern)
        except UnsupportedPattern as why:
            problems.append(f"spec.sampling.redact.patterns[{index}]: {why}; it masks nothing")
            continue
        patterns.append(pattern)
    redaction = Redaction(emails=spec.redact.emails, cards=spec.redact.card_numbers, patterns=tuple(patterns))
    return Sampling(rate=spec.sample_rate, max_body_bytes=spec.max_body_bytes, redaction=redaction)


def _prompt_checks(tier: ApiTier, served: Sequence[Model], problems: list[str]) -> tuple[PromptCheck, ...]:
    """The tier's prompt checks the gateway can run; one problem for each pattern it cannot run, and for each
    check that names a model not served here (which nothing it checks can reach)."""
    names = {model.name for model in served}
    checks = []
    for index, check in enumerate(tier.spec.prompt_checks):
        field = f"spec.promptChecks[{index}]"
        unknown = [model for model in check.models if model not in names]
        if unknown:
            problems.append(f"{field}.models: no ModelDeployment here serves {', '.join(unknown)}")
        judged = PromptCheck(name=check.name, models=tuple(check.models), refuse=check.refuse)
        if check.guardrail_model is not None:
            if check.guardrail_model not in names:
                problems.append(
                    f"{field}.guardrailModel: no ModelDeployment here serves {check.guardrail_model}; "
                    "it checks nothing"
                )
                continue
            guardrail = Guardrail(model=check.guardrail_model, timeout_ms=check.timeout_ms)
            checks.append(replace(judged, guardrail=guardrail))
            continue
        try:
            pattern = prompt_pattern(check.pattern or "")
        except UnsupportedPattern as why:
            problems.append(f"{field}.pattern: {why}; it checks nothing")
            continue
        checks.append(replace(judged, pattern=pattern))
    return tuple(checks)


def _tier(
    resource: ApiTier,
    *,
    level: int,
    allowed: tuple[tuple[str, int], ...],
    served: Sequence[Model],
    options: GatewayOptions,
    secrets: Sequence[Mapping[str, Any]],
    problems: dict[str, list[str]],
) -> Tier:
    spec = resource.spec
    costed, mismatched = margin_models(resource, [name for name, _ in allowed], served)
    problems[resource.metadata.name] += mismatched
    jwt = spec.auth.jwt
    if jwt is not None and not _authority(jwt.jwks_uri):
        problems[resource.metadata.name].append(
            f"spec.auth.jwt.jwksUri: {jwt.jwks_uri!r} names no host and port to fetch keys from; "
            "no token is accepted for this tier"
        )
        jwt = None
    mtls = None
    if spec.auth.mtls is not None:
        reference = spec.auth.mtls.ca_secret_ref.name
        ca = _secret_value(secrets, reference, "ca.crt")
        if ca is None:
            problems[resource.metadata.name].append(
                f'spec.auth.mtls.caSecretRef: Secret "{reference}" with data key ca.crt not found; '
                "no client certificate is accepted for this tier"
            )
        else:
            mtls = Mtls(
                ca_pem=ca,
                allowed_sans=tuple(spec.auth.mtls.allowed_subject_alt_names),
                crl_pem=_secret_value(secrets, reference, "ca.crl"),
            )
    sla = None if spec.sla is None else plan_sla(spec.sla)
    return Tier(
        name=resource.metadata.name,
        sampling=_sampling(spec.sampling, problems[resource.metadata.name]),
        priority_level=level,
        limits=tuple(
            Limit(kind=kind, scope=counter_name(resource.metadata.name), value=value)
            for kind, value in _set_limits(spec.limits).items()
        ),
        model_limits=tuple(
            _model_limits(resource, model.name, options.runtime.envoy_replicas) for model in served
        ),
        allowed=allowed,
        fail_open=spec.limits.fail_open,
        retry_after=spec.over_limit.retry_after,
        currency=spec.pricing.currency,
        input_price_per_1k=spec.pricing.input_per1k_tokens,
        output_price_per_1k=spec.pricing.output_per1k_tokens,
        cached_price_per_1k=spec.pricing.cached_per1k_tokens,
        cache=spec.cache.enabled,
        hits_limited=spec.cache.hits_count_against_limits,
        usage_spike_factor=spec.alerts.usage_spike_factor,
        near_limit_ratio=spec.alerts.near_limit_ratio,
        near_limit_hours=spec.alerts.near_limit_hours,
        repeated_prompt_ratio=spec.alerts.repeated_prompt_ratio,
        repeated_prompt_min_requests=spec.alerts.repeated_prompt_min_requests,
        key_signals=_key_signals(spec.alerts.key_compromise),
        sla=sla,
        sla_latency_ms=sla.latency_ms if sla else None,
        margin_models=costed,
        allowed_cidrs=tuple(
            str(ipaddress.ip_network(cidr, strict=False)) for cidr in spec.network.allowed_cidrs
        ),
        per_ip_rpm=spec.network.requests_per_minute_per_ip,
        prompt_checks=_prompt_checks(resource, served, problems[resource.metadata.name]),
        jwt=Jwt(
            issuer=jwt.issuer,
            jwks_uri=jwt.jwks_uri,
            audiences=tuple(jwt.audiences),
            consumer_claim=jwt.consumer_claim,
            required_scopes=tuple(jwt.required_scopes),
            max_lifetime_seconds=jwt.max_lifetime_seconds,
        )
        if jwt
        else None,
        mtls=mtls,
    )


def _key_signals(spec: KeyCompromise) -> KeySignals | None:
    if not spec.enabled:
        return None
    return KeySignals(
        networks_per_hour=spec.networks_per_hour,
        agents_per_hour=spec.agents_per_hour,
        change_factor=spec.change_factor,
        new_network_share=spec.new_network_share,
        new_keys_per_network=spec.new_keys_per_network_per_hour,
    )


def _authority(uri: str) -> tuple[str, int] | None:
    """The host and port of an https URI, or None when it has none that Envoy could connect to."""
    try:
        parsed = urlsplit(uri)
        host, port = parsed.hostname, parsed.port or 443
    except ValueError:
        return None
    return (host, port) if host and parsed.scheme == "https" else None


def _secret_value(secrets: Iterable[Mapping[str, Any]], name: str, key: str) -> str | None:
    for secret in secrets:
        if secret["metadata"]["name"] == name:
            return _decoded(secret, key)
    return None


def _decoded(secret: Mapping[str, Any], key: str) -> str | None:
    raw = (secret.get("data") or {}).get(key)
    if raw is None:
        return (secret.get("stringData") or {}).get(key)  # a manifest not yet through the API server
    try:
        return base64.b64decode(raw, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


def selects(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions, all must hold)."""
    tests: dict[str, Callable[[str | None, list[str]], bool]] = {
        "In": lambda value, values: value in values,
        "NotIn": lambda value, values: value not in values,
        "Exists": lambda value, _: value is not None,
        "DoesNotExist": lambda value, _: value is None,
    }
    return all(labels.get(key) == value for key, value in selector.match_labels.items()) and all(
        tests[requirement.operator](labels.get(requirement.key), requirement.values)
        for requirement in selector.match_expressions
    )


def key_claimants(tiers: Sequence[ApiTier], labels: Mapping[str, str]) -> list[ApiTier]:
    """The tiers whose API keys select a Secret with these labels, first by priority: the key is the first
    one's."""
    return [
        tier
        for tier in tiers
        if tier.spec.auth.api_keys and selects(tier.spec.auth.api_keys.secret_selector, labels)
    ]


def _credentials(
    tiers: Sequence[ApiTier],
    secrets: Sequence[Mapping[str, Any]],
    now: datetime,
    problems: dict[str, list[str]],
) -> tuple[tuple[Credential, ...], dict[str, int]]:
    """Live API keys with their tiers; a Secret selected by several tiers belongs to the first by priority."""
    credentials: list[Credential] = []
    seen_keys: dict[str, str] = {}
    consumers: dict[str, set[str]] = {}
    for secret in sorted(secrets, key=lambda secret: str(secret["metadata"]["name"])):
        meta = secret["metadata"]
        labels = meta.get("labels") or {}
        claimants = key_claimants(tiers, labels)
        if not claimants:
            continue
        owner, name = claimants[0].metadata.name, meta["name"]
        for other in claimants[1:]:
            problems[other.metadata.name].append(
                f'spec.auth.apiKeys.secretSelector: Secret "{name}" is also selected by tier "{owner}", '
                "which comes first by priority; its key works for that tier only"
            )
        key = _decoded(secret, API_KEY)
        if not key:
            problems[owner].append(f'Secret "{name}": no data key "{API_KEY}"; it grants nothing')
            continue
        expires_at = _expiry(meta.get("annotations") or {})
        if expires_at == -1:
            problems[owner].append(
                f'Secret "{name}": annotation {EXPIRES_ANNOTATION} is not an RFC 3339 time; key refused'
            )
            continue
        if expires_at is not None and expires_at <= now.timestamp():
            continue  # expired: dropped from the gateway (which also refuses it by its own clock until then)
        if key in seen_keys:
            problems[owner].append(
                f'Secret "{name}": its key is the same as Secret "{seen_keys[key]}"\'s; only that one counts'
            )
            continue
        seen_keys[key] = name
        consumer = labels.get(CONSUMER_LABEL) or name
        api_keys = claimants[0].spec.auth.api_keys
        unverified = (
            api_keys is not None and api_keys.require_verified and labels.get(VERIFIED_LABEL) != "true"
        )
        annotations = meta.get("annotations") or {}
        webhook = annotations.get(NOTIFY_ANNOTATION)
        if webhook is not None and not _is_webhook(webhook):
            problems[owner].append(
                f'Secret "{name}": annotation {NOTIFY_ANNOTATION} must be an http(s) URL with a host; '
                "its consumer gets no notices"
            )
            webhook = None
        suspended = None
        if labels.get(SUSPENDED_LABEL) == "true":
            suspended = annotations.get(SUSPENDED_REASON) or "no reason given"
        credentials.append(
            Credential(
                id=name,
                consumer=consumer,
                tier=owner,
                key=key,
                expires_at=expires_at,
                unverified=unverified,
                suspended=suspended,
                notify_webhook=webhook,
                created_at=_created(meta),
            )
        )
        consumers.setdefault(owner, set()).add(consumer)
    return tuple(credentials), {tier: len(names) for tier, names in consumers.items()}


def _created(metadata: Mapping[str, Any]) -> int | None:
    """When the API server created the Secret (Unix seconds); None when it does not say (a file's)."""
    stamp = metadata.get("creationTimestamp")
    try:
        return int(datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()) if stamp else None
    except ValueError:
        return None


def _is_webhook(url: str) -> bool:
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:  # an unclosed IPv6 bracket, for one
        return False
    return parts.scheme in ("http", "https") and bool(host) and not any(c.isspace() for c in url)


def _expiry(annotations: Mapping[str, str]) -> int | None:
    """The expiry in Unix seconds, None without one, -1 when it cannot be read (the key is then refused)."""
    value = annotations.get(EXPIRES_ANNOTATION)
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return -1
    if moment.tzinfo is None:
        return -1
    return int(moment.timestamp())
