"""One reconcile per resource: observe → translate → apply → status. Level-based: safe to run any time."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from tollway.api import ApiTier, ModelDeployment, Resource
from tollway.api.parse import InvalidResource, parse
from tollway.ir.names import GATEWAY_NAME, triton_children
from tollway.ir.observed import GatewayState, MetricsState, ServingState, UsageState
from tollway.k8s.apply import ApplyError, apply_all, prune, prune_named, served
from tollway.k8s.events import record_event
from tollway.k8s.resources import list_resources, list_secrets, peering_peers, read_resource
from tollway.k8s.serving import deployment_state, pod_problems
from tollway.k8s.status import apply_status
from tollway.observe.prometheus import model_metrics, tier_usage
from tollway.observe.triton import model_state
from tollway.render.monitoring import MONITORING_API
from tollway.settings import Settings
from tollway.translate import Context, translate, translate_gateway
from tollway.translate.conditions import apply_failed, changed_conditions, event_type, settle
from tollway.translate.gateway import TierReport
from tollway.translate.peering import outranked
from tollway.translate.serving import PROMETHEUS_URL, tier_priority

Logger = logging.Logger | logging.LoggerAdapter[Any]

Key = tuple[str, str, str]

#: Objects being reconciled now, and those asked for again meanwhile. Watch events (of a resource and of
#: its children) and the resync arrive on several threads; one reconcile per object runs at a time, and
#: the requests that arrive during it collapse into a single re-run on the latest state.
_busy: set[Key] = set()
_again: set[Key] = set()
_guard = threading.Lock()


def _coalesced(key: Key, run: Callable[[bool], bool]) -> None:
    """Run `run(first)` for `key` unless it runs already (then it runs once more after, on fresh state).

    `run` returns False when there is nothing left to converge (the object is gone).
    """
    with _guard:
        if key in _busy:
            _again.add(key)
            return
        _busy.add(key)
    try:
        first = True
        while run(first):
            first = False
            with _guard:
                if key not in _again:
                    _busy.discard(key)  # in the same hold of the guard: no request can slip in between
                    return
                _again.discard(key)
    finally:
        with _guard:
            if key in _busy:  # left by an exception, or by the object's deletion
                _busy.discard(key)
                _again.discard(key)


def reconcile(kind: type[Resource], body: Mapping[str, Any], logger: Logger, settings: Settings) -> None:
    metadata = body.get("metadata") or {}
    namespace, name = str(metadata.get("namespace")), str(metadata.get("name"))

    def run(first: bool) -> bool:
        current = body if first else read_resource(kind, namespace, name)
        if current is None:
            return False
        _reconcile_once(kind, current, logger, settings)
        return True

    _coalesced((kind.kind_name, namespace, name), run)


def reconcile_gateway(namespace: str, logger: Logger, settings: Settings) -> None:
    """Converge the namespace's gateway (Envoy, ratelimit, Redis and their config) and its tiers' status."""

    def run(_: bool) -> bool:
        _reconcile_gateway_once(namespace, logger, settings)
        return True

    _coalesced(("Gateway", namespace, GATEWAY_NAME), run)


def _reconcile_gateway_once(namespace: str, logger: Logger, settings: Settings) -> None:
    tiers = list_resources(ApiTier, namespace)
    models = list_resources(ModelDeployment, namespace)
    now = datetime.now(UTC)
    options = replace(
        settings.gateway, runtime=replace(settings.gateway.runtime, monitoring=_monitoring_served())
    )
    result = translate_gateway(namespace, tiers + models, list_secrets(namespace), now, options)
    error = ""
    try:
        sent = apply_all(result.manifests)
    except ApplyError as refused:
        error = str(refused)
    else:
        if sent:
            logger.info("gateway of %s: applied %d of %d children", namespace, sent, len(result.manifests))
        removed = prune_named(namespace, f"tollway.dev/gateway={GATEWAY_NAME}", result.stale)
        if removed:
            logger.info("gateway of %s: removed %s", namespace, ", ".join(removed))
    state = GatewayState(
        envoy=deployment_state(namespace, GATEWAY_NAME),
        applied=not error and bool(result.manifests),
        error=error,
    )
    for body in tiers:
        report = result.plan.reports.get(body["metadata"]["name"], TierReport())
        usage = _usage(settings, namespace, body, now)
        status = translate(ApiTier, body, now, Context(tier=report, gateway=state, usage=usage)).status
        _write_status(ApiTier, body, status, logger)


def resource_changed(
    kind: type[Resource], body: Mapping[str, Any], logger: Logger, settings: Settings
) -> None:
    """A watch event of a ModelDeployment (its reconcile, then its namespace's gateway: the routes) or of an
    ApiTier (the gateway, which writes every tier's status)."""
    namespace = body["metadata"].get("namespace")
    if kind is ApiTier:
        reconcile_gateway(namespace, logger, settings)
        return
    reconcile(kind, body, logger, settings)
    gateway_namespace_changed(namespace, logger, settings)


def secret_changed(secret: Mapping[str, Any], logger: Logger, settings: Settings) -> None:
    """The gateway's own config Secret (restored like any child), or any other: maybe an API key."""
    if (secret["metadata"].get("labels") or {}).get("tollway.dev/gateway"):
        reconcile_owner(secret, logger, settings)
    else:
        gateway_namespace_changed(secret["metadata"].get("namespace"), logger, settings)


def gateway_namespace_changed(namespace: str | None, logger: Logger, settings: Settings) -> None:
    """Something the gateway reads changed (a model, a Secret): reconcile it if the namespace has tiers."""
    if namespace and list_resources(ApiTier, namespace):
        reconcile_gateway(namespace, logger, settings)


def _reconcile_once(
    kind: type[Resource], body: Mapping[str, Any], logger: Logger, settings: Settings
) -> None:
    if (body.get("metadata") or {}).get("deletionTimestamp"):
        return  # children go with their owner (garbage collector); there is nothing to converge
    now = datetime.now(UTC)
    result = translate(kind, body, now, observe(kind, body, settings))
    try:
        sent = apply_all(result.manifests)
    except ApplyError as refused:
        _write_status(kind, body, apply_failed(result.status, str(refused), now), logger)
        return  # nothing is pruned after a failed apply; the next reconcile tries again
    if sent:
        logger.info("applied %d of %d children", sent, len(result.manifests))
    metadata = body["metadata"]
    selector = f"tollway.dev/model={metadata['name']}"
    if result.stale_kinds:
        removed = prune(metadata["namespace"], metadata["uid"], selector, result.stale_kinds)
        if removed:
            logger.info("removed children no longer rendered: %s", ", ".join(removed))
    _write_status(kind, body, result.status, logger)


class Resync(threading.Thread):
    """Reconciles every resource every `settings.resync_seconds`, whether or not anything changed.

    Why not kopf timers: kopf puts a finalizer on every object with a timer, and an object with a finalizer
    cannot be deleted while the operator is away (uninstalled, or stopped in a test bed). A plain loop of
    LIST calls needs no finalizer. With several operator replicas (kopf peering) a replica that kopf has
    paused in favour of another skips its resyncs too, so only the serving replica writes.
    """

    def __init__(self, settings: Settings, logger: Logger) -> None:
        super().__init__(name="tollway-resync", daemon=True)
        self.settings, self.logger, self.stopping = settings, logger, threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.settings.resync_seconds):
            for namespace in self.settings.namespaces or (None,):
                if self._standing_by(namespace):
                    continue
                try:
                    models = list_resources(ModelDeployment, namespace)
                    tiers = list_resources(ApiTier, namespace)
                except Exception:  # the API server away for a moment must not end the loop
                    self.logger.exception("resync could not list resources; the next resync retries")
                    continue
                for body in models:
                    self._reconcile(ModelDeployment, body)
                for gateway in sorted({tier["metadata"]["namespace"] for tier in tiers}):
                    self._reconcile_gateway(gateway)

    def _standing_by(self, namespace: str | None) -> bool:
        """Whether kopf's peering object (cluster-wide, or this namespace's) names a live replica that
        outranks this one; when it cannot be read, the pass is skipped rather than risk two writers."""
        if self.settings.peering is None:
            return False
        try:
            peers = peering_peers(self.settings.peering, namespace)
        except Exception:
            self.logger.exception("resync could not read the peering object; the next resync retries")
            return True
        return outranked(peers, self.settings.peering_priority, datetime.now(UTC))

    def _reconcile_gateway(self, namespace: str) -> None:
        try:
            reconcile_gateway(namespace, self.logger, self.settings)
        except Exception:  # one namespace's failure must not stop the resync of the others
            self.logger.exception("resync of the gateway of %s failed; the next resync retries", namespace)

    def _reconcile(self, kind: type[Resource], body: Mapping[str, Any]) -> None:
        try:
            reconcile(kind, body, self.logger, self.settings)
        except Exception:  # one object's failure must not stop the resync of the others
            name = f"{body['metadata'].get('namespace')}/{body['metadata'].get('name')}"
            self.logger.exception("resync of %s %s failed; the next resync retries", kind.kind_name, name)


def reconcile_owner(child: Mapping[str, Any], logger: Logger, settings: Settings) -> None:
    """A child changed or went away: reconcile what it belongs to (restoring the child)."""
    metadata = child.get("metadata") or {}
    labels = metadata.get("labels") or {}
    if labels.get("tollway.dev/gateway"):
        reconcile_gateway(metadata["namespace"], logger, settings)
        return
    owner = labels.get("tollway.dev/model")
    if owner:
        body = read_resource(ModelDeployment, metadata["namespace"], owner)
        if body is not None:
            reconcile(ModelDeployment, body, logger, settings)


def observe(kind: type[Resource], body: Mapping[str, Any], settings: Settings) -> Context:
    """Everything the translation of `body` needs from the cluster and from Triton."""
    base = Context(storage_initializer_image=settings.storage_initializer_image)
    if kind is not ModelDeployment:
        return base
    try:
        resource = parse(ModelDeployment, body)
    except InvalidResource:
        return base  # the translation reports it; there is nothing to observe for a spec not applied
    namespace = resource.metadata.namespace
    priorities = tuple(tier_priority(tier) for tier in list_resources(ApiTier, namespace))
    service = triton_children(resource.metadata.name)["triton"]
    deployment = deployment_state(namespace, service)
    triton = None
    if deployment is not None:
        address = settings.triton_address.format(service=service, namespace=namespace)
        triton = model_state(
            address, resource.model_name, [entry.version for entry in resource.spec.versions]
        )
    problems = pod_problems(namespace, resource.metadata.name)
    metrics = _metrics(settings, namespace, resource.model_name, (body.get("status") or {}).get("metrics"))
    serving = ServingState(deployment=deployment, pod_problems=problems, triton=triton, metrics=metrics)
    return Context(
        tier_priorities=priorities,
        storage_initializer_image=settings.storage_initializer_image,
        prometheus_url=settings.prometheus_url or PROMETHEUS_URL,
        monitoring=_monitoring_served(),
        serving=serving,
    )


def _monitoring_served() -> bool:
    """Whether the cluster serves prometheus-operator's ServiceMonitor and PrometheusRule."""
    return all(served(MONITORING_API, kind) for kind in ("ServiceMonitor", "PrometheusRule"))


def _metrics(
    settings: Settings, namespace: str, model: str, previous: Mapping[str, Any] | None
) -> MetricsState | None:
    """The model's figures from Prometheus, at most once per resync (the ones in status when younger)."""
    if not settings.prometheus_url:
        return None
    if previous is not None and _fresh(previous, settings):
        values = {_snake(key): value for key, value in previous.items() if key != "observedAt"}
        return MetricsState(reachable=True, values=values, observed_at=str(previous["observedAt"]))
    return model_metrics(settings.prometheus_url, namespace, model)


def _usage(settings: Settings, namespace: str, tier: Mapping[str, Any], now: datetime) -> UsageState | None:
    """A tier's use today from Prometheus, at most once per resync (what status holds when younger)."""
    if not settings.prometheus_url:
        return None
    previous = (tier.get("status") or {}).get("usage")
    if previous is not None and _fresh(previous, settings):
        counts = {_snake(key): value for key, value in previous.items() if key in USAGE_COUNTS}
        return UsageState(reachable=True, observed_at=str(previous["observedAt"]), **counts)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    since = int((now - midnight).total_seconds())
    return tier_usage(settings.prometheus_url, namespace, tier["metadata"]["name"], since)


USAGE_COUNTS = ("consumers", "requests", "inputTokens", "outputTokens")


def _fresh(previous: Mapping[str, Any] | None, settings: Settings) -> bool:
    """Whether figures in status are younger than a resync (then they are not read again)."""
    if not previous or not previous.get("observedAt"):
        return False
    age = datetime.now(UTC) - datetime.fromisoformat(str(previous["observedAt"]).replace("Z", "+00:00"))
    return age.total_seconds() < settings.resync_seconds


def _snake(name: str) -> str:
    """'p99Ms' → 'p99_ms' (status fields in wire form → model field names)."""
    return "".join(f"_{char.lower()}" if char.isupper() else char for char in name)


def _with_stale_metrics(desired: Mapping[str, Any], current: Mapping[str, Any]) -> Mapping[str, Any]:
    """When Prometheus could not be asked, the figures (a model's metrics, a tier's usage) stay as the cluster
    holds them now, not as the older copy the event carried, so `observedAt` never moves back."""
    unavailable = any(
        item.get("type") == "MetricsAvailable" and item.get("status") == "False"
        for item in desired.get("conditions", [])
    )
    if not unavailable:
        return desired
    return {**desired, **{key: current[key] for key in ("metrics", "usage") if key in current}}


def _write_status(
    kind: type[Resource], body: Mapping[str, Any], desired: Mapping[str, Any], logger: Logger
) -> None:
    metadata = body["metadata"]
    if settle(body.get("status") or {}, desired) is None:
        return  # the steady state: nothing written
    # The event or timer that brought `body` may be older than a status write another thread just made.
    latest = read_resource(kind, metadata["namespace"], metadata["name"])
    if latest is not None:
        desired = _with_stale_metrics(desired, latest.get("status") or {})
    status = settle(latest.get("status") or {}, desired) if latest else None
    if latest is None or status is None or not apply_status(kind, metadata, status):
        return
    for item in changed_conditions(latest.get("status") or {}, status):
        note = f"{item.type}={item.status} ({item.reason}): {item.message}"
        announce = event_type(item)
        logger.log(logging.WARNING if announce == "Warning" else logging.INFO, "%s", note)
        if announce:
            record_event(kind, metadata, type=announce, reason=item.reason, note=note)
