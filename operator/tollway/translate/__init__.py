"""The pure core: custom resources in, what the cluster must hold out (manifests and status).

No clock (the caller passes `now`), no I/O, no logging, no settings lookups: everything the translation
depends on arrives in its arguments, so a golden file pins it down.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

from tollway.api import KINDS, ApiTier, ModelDeployment, Resource
from tollway.api.parse import InvalidResource, parse
from tollway.ir.gateway import Images
from tollway.ir.names import GATEWAY_NAME, REDIS_PASSWORD, TRITON_KEY, gateway_children, serving_children
from tollway.ir.network import NetworkPeers
from tollway.ir.serving import TritonServing
from tollway.ir.state import GatewayState, ServingState, SlaState, UsageState
from tollway.render import gateway as gateway_render
from tollway.render import serving as serving_render
from tollway.translate import api_tier, model_deployment
from tollway.translate.conditions import condition
from tollway.translate.gateway import GatewayOptions, GatewayPlan, TierReport, model_capacity, plan_gateway
from tollway.translate.serving import (
    PROMETHEUS_URL,
    STORAGE_INITIALIZER,
    TOLLWAY_IMAGE,
    plan_serving,
    tier_priority,
)

DEFAULT_OPTIONS = GatewayOptions()
DEFAULT_PEERS = NetworkPeers()

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Context:
    """What a translation needs besides the resource itself."""

    tier_priorities: tuple[int, ...] = ()
    """The priorities of the ApiTiers in the resource's namespace (Triton's priority levels)."""
    storage_initializer_image: str = STORAGE_INITIALIZER
    tollway_image: str = TOLLWAY_IMAGE
    """Tollway's own image, for the OpenAI server beside a language model's Triton."""
    redis_image: str = Images.redis
    """For a model's shared answer cache: the gateway's Redis image."""
    prometheus_url: str = PROMETHEUS_URL
    """Where KEDA's triggers query Prometheus."""
    monitoring: bool = True
    """Whether the cluster serves prometheus-operator's ServiceMonitor and PrometheusRule."""
    serving: ServingState = field(default_factory=ServingState)
    """What the cluster and Triton show now, for status."""
    tier: TierReport = field(default_factory=TierReport)
    """For an ApiTier: what its namespace's gateway makes of it."""
    gateway: GatewayState = field(default_factory=GatewayState)
    usage: UsageState | None = None
    """For an ApiTier: its use today, when the operator has a Prometheus to ask."""
    sla: SlaState | None = None
    """For an ApiTier with an SLA: its counts this month, when the operator has a Prometheus to ask."""
    network: NetworkPeers = DEFAULT_PEERS
    """Who besides the gateway may reach Triton: the operator and Prometheus."""
    admin_key: str = ""
    """For a ModelDeployment: the key of Triton's restricted APIs (`kept_or_fresh`: the one its Secret holds,
    or a fresh one the caller drew when there is no Secret yet)."""
    floor: int = 0
    """For a ModelDeployment: the replicas a burst holds as its autoscaler's minimum (`translate.floor`)."""


@dataclass(frozen=True)
class Result:
    """What one resource becomes."""

    status: dict[str, Any]
    """The status fields Tollway owns, in wire form (camelCase), conditions included."""
    manifests: tuple[Manifest, ...] = ()
    """Children to apply; empty when the resource is invalid, so nothing is ever half-applied."""
    problems: tuple[str, ...] = field(default=())
    """Why the resource is invalid, each naming its field; empty when it is valid."""
    stale_kinds: tuple[tuple[str, str], ...] = ()
    """(apiVersion, kind) of children Tollway may have made before but renders no more: prune them.
    Empty for an invalid resource, so that a bad edit never takes a running model down."""
    stale: tuple[tuple[str, str, str], ...] = ()
    """(apiVersion, kind, name) of optional children of a kind still rendered (the shared answer cache's)
    that are no longer rendered: prune them too."""
    ir: TritonServing | None = None
    """For a valid ModelDeployment: the plain-data plan its manifests are rendered from."""


def translate(
    kind: type[Resource], document: Mapping[str, Any], now: datetime, context: Context = Context()
) -> Result:
    generation = int((document.get("metadata") or {}).get("generation") or 0)
    make = partial(condition, generation=generation, now=now)
    try:
        resource = parse(kind, document)
    except InvalidResource as invalid:
        message = "; ".join(invalid.problems)
        conditions = [
            make("Ready", "False", "InvalidSpec", message),
            make("Progressing", "False", "InvalidSpec", "nothing is applied until the spec is fixed"),
            make("Degraded", "True", "InvalidSpec", message),
        ]
        status = {"observed_generation": generation, "conditions": conditions}
        return Result(status=_wire(kind, status), problems=invalid.problems)
    if isinstance(resource, ModelDeployment):
        plan = plan_serving(
            resource,
            context.tier_priorities,
            context.storage_initializer_image,
            prometheus_url=context.prometheus_url,
            monitoring=context.monitoring,
            tollway_image=context.tollway_image,
            redis_image=context.redis_image,
            floor=context.floor,
        )
        children = serving_render.render(plan, context.network, context.admin_key)
        status = model_deployment.status(resource, context.serving, now, make, document.get("status"))
        rendered = {(child["apiVersion"], child["kind"]) for child in children}
        stale_kinds = tuple(kind for kind in serving_render.CHILD_KINDS if kind not in rendered)
        named = {(child["apiVersion"], child["kind"], child["metadata"]["name"]) for child in children}
        stale = tuple(sorted(serving_render.optional_children(plan.name) - named))
        return Result(
            status=_wire(kind, status),
            manifests=tuple(children),
            stale_kinds=stale_kinds,
            stale=stale,
            ir=plan,
        )
    assert isinstance(resource, ApiTier)
    previous_usage = (document.get("status") or {}).get("usage")
    status = api_tier.status(
        resource,
        context.tier,
        context.gateway,
        make,
        usage=context.usage,
        previous_usage=previous_usage,
        sla=context.sla,
        previous_sla=(document.get("status") or {}).get("sla"),
        now=now,
    )
    return Result(status=_wire(kind, status))  # its children are the namespace's gateway: `translate_gateway`


@dataclass(frozen=True)
class GatewayResult:
    plan: GatewayPlan
    manifests: tuple[Manifest, ...]
    stale: tuple[tuple[str, str, str], ...]
    """(apiVersion, kind, name) of gateway children that may exist from before and are not rendered now."""


def translate_gateway(
    namespace: str,
    documents: Iterable[Mapping[str, Any]],
    secrets: Iterable[Mapping[str, Any]],
    now: datetime,
    options: GatewayOptions = DEFAULT_OPTIONS,
    *,
    network: NetworkPeers = DEFAULT_PEERS,
    fresh: str = "",
) -> GatewayResult:
    """The gateway of `namespace` from its ApiTier and ModelDeployment documents (invalid ones left out:
    their own status says why) and its Secrets; `fresh` is the Redis password when its Secret is not among
    them yet (`kept_or_fresh`)."""
    tiers: list[ApiTier] = []
    models: list[ModelDeployment] = []
    documents, secrets = list(documents), list(secrets)
    tier_documents = [document for document in documents if document["kind"] == ApiTier.kind_name]
    for document in documents:
        try:
            resource = parse(KINDS[document["kind"]], document)
        except InvalidResource:
            continue
        if isinstance(resource, ApiTier):
            tiers.append(resource)
        elif isinstance(resource, ModelDeployment):
            models.append(resource)
    waits = {
        str(document["metadata"]["name"]): float(wait)
        for document in documents
        if document["kind"] == ModelDeployment.kind_name
        and (wait := ((document.get("status") or {}).get("metrics") or {}).get("estimatedWaitSeconds"))
        is not None
    }
    capacities = {
        str(document["metadata"]["name"]): model_capacity(document)
        for document in documents
        if document["kind"] == ModelDeployment.kind_name
    }
    plan = plan_gateway(
        namespace,
        tiers=tiers,
        models=models,
        secrets=list(secrets),
        now=now,
        options=options,
        waits=waits,
        capacities=capacities,
    )
    password = kept_or_fresh(secrets, gateway_children(GATEWAY_NAME)["redis"], REDIS_PASSWORD, fresh)
    rendered = gateway_render.manifests(plan.gateway, now, network, password) if plan.gateway else []
    if plan.gateway is None and tier_documents:
        return GatewayResult(plan, (), ())  # only invalid tiers: keep what serves now until one is fixed
    kept = {(manifest["apiVersion"], manifest["kind"], manifest["metadata"]["name"]) for manifest in rendered}
    stale = gateway_render.possible_children(GATEWAY_NAME) - kept
    return GatewayResult(plan, tuple(rendered), tuple(sorted(stale)))


def kept_or_fresh(secrets: Iterable[Mapping[str, Any]], name: str, key: str, fresh: str) -> str:
    """The value of a Secret Tollway generates: the one the cluster holds, else `fresh`.

    The caller draws `fresh` (as it reads the clock), so the core stays pure; once the Secret exists every
    reconcile renders the same one, which the apply layer then leaves alone (no write, no rotation).
    """
    for found in secrets:
        if found["metadata"]["name"] == name:
            try:
                kept = base64.b64decode((found.get("data") or {}).get(key) or "", validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                kept = ""
            return kept or fresh
    return fresh


def _wire(kind: type[Resource], status: dict[str, Any]) -> dict[str, Any]:
    """The status in the form the API server stores: camelCase, defaults included (the API server fills in
    the CRD's defaults, so a status without them never equals what it holds and would be written again on
    every reconcile), unset optional fields left out."""
    typed = kind.status_model.model_validate(status)
    return typed.model_dump(by_alias=True, exclude_none=True, mode="json")


@dataclass(frozen=True)
class Translation:
    resources: list[tuple[Mapping[str, Any], Result]]
    gateways: dict[str, GatewayResult]
    """Namespace → its gateway, for each namespace with an ApiTier."""


def translate_all(
    documents: Iterable[Mapping[str, Any]],
    now: datetime,
    options: GatewayOptions = DEFAULT_OPTIONS,
    *,
    network: NetworkPeers = DEFAULT_PEERS,
    fresh: str = "",
) -> Translation:
    """Translate a set of resources without a cluster, as `tollway render` and the golden tests do.

    The ApiTiers and Secrets among them stand for those of their namespace; nothing is observed, so
    status reads as it would before the first apply. Each generated Secret missing among them gets a value
    of its own derived from `fresh` (the caller's random draw; the golden tests' fixed one).
    """
    loaded = list(documents)
    ours = [document for document in loaded if document.get("kind") in KINDS]
    namespaces = sorted({_namespace(document) for document in ours if document["kind"] == ApiTier.kind_name})
    secrets = [document for document in loaded if document.get("kind") == "Secret"]

    def secrets_of(namespace: str) -> list[Mapping[str, Any]]:
        return [document for document in secrets if _namespace(document) == namespace]

    gateways = {
        namespace: translate_gateway(
            namespace,
            [document for document in ours if _namespace(document) == namespace],
            secrets_of(namespace),
            now,
            options,
            network=network,
            fresh=_derived(fresh, namespace, GATEWAY_NAME),
        )
        for namespace in namespaces
    }
    priorities: dict[str, list[int]] = {}
    for document in ours:
        if document["kind"] == ApiTier.kind_name:
            priorities.setdefault(_namespace(document), []).append(tier_priority(document))
    resources = []
    for document in ours:
        namespace = _namespace(document)
        plan = gateways[namespace].plan if namespace in gateways else None
        report = plan.reports.get(str(document["metadata"].get("name"))) if plan else None
        name = str(document["metadata"].get("name"))
        key = kept_or_fresh(
            secrets_of(namespace),
            serving_children(name)["triton"],
            TRITON_KEY,
            _derived(fresh, namespace, name),
        )
        context = Context(
            tier_priorities=tuple(priorities.get(namespace, ())),
            tier=report or TierReport(),
            network=network,
            admin_key=key,
        )
        resources.append((document, translate(KINDS[document["kind"]], document, now, context)))
    return Translation(resources, gateways)


def _derived(fresh: str, namespace: str, name: str) -> str:
    """One value per generated Secret from one draw, so no two Secrets share a password."""
    return hashlib.sha256(f"{fresh}/{namespace}/{name}".encode()).hexdigest() if fresh else ""


def _namespace(document: Mapping[str, Any]) -> str:
    return str((document.get("metadata") or {}).get("namespace", "default"))
