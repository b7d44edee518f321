"""The reconciles of a ModelDeployment and of a namespace's gateway, and the watch events that start them."""

from __future__ import annotations

import copy
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from tollway.api import ApiTier, ModelDeployment, Resource
from tollway.ir.gateway import Gateway
from tollway.ir.names import GATEWAY_NAME, MODEL_LABEL
from tollway.ir.state import GatewayState
from tollway.k8s.apply import ApplyError
from tollway.reconcile.cluster import Body, Clock, Cluster, Telemetry
from tollway.reconcile.coalesce import Coalescer
from tollway.reconcile.floors import Floors
from tollway.reconcile.observation import Observer
from tollway.reconcile.status import Logger, write_status
from tollway.settings import Settings
from tollway.translate import Context, translate, translate_gateway
from tollway.translate.conditions import apply_failed
from tollway.translate.gateway import TierReport
from tollway.translate.peering import outranked
from tollway.translate.suspension import SecretMark, suspended_alerts, suspensions


class Reconciler:
    """Tollway's reconciles and the state they share; kopf's memo holds the one instance (see `handlers`)."""

    def __init__(
        self, settings: Settings, cluster: Cluster, telemetry: Telemetry, clock: Clock, threads: int = 0
    ) -> None:
        """`threads`: how many threads of its own run the reconciles (see Coalescer); 0: the caller's."""
        self.settings, self.cluster, self.telemetry, self.clock = settings, cluster, telemetry, clock
        self.floors = Floors()
        """The burst floors that hold now (`Burst` sets them; a model's reconcile renders its own)."""
        self.observer = Observer(settings, cluster, telemetry, clock, self.floors)
        self.coalescer = Coalescer(threads)
        self.listed = threading.Event()
        """Set by the first watch event: kopf runs handlers only once its indexes hold the initial listing
        of every watched kind. Before that `Cluster.cached_resources` may answer with nothing, and a resync
        would translate a namespace from nothing (pruning its gateway), so it waits for this."""

    def standing_by(self, namespace: str | None, logger: Logger) -> bool:
        """Whether kopf's peering object (cluster-wide, or this namespace's) names a live replica that
        outranks this one, so that only the serving replica writes outside a watch event (the resync, the
        burst floor); when it cannot be read this replica stands by rather than risk two writers."""
        peering = self.settings.peering
        if peering is None:
            return False
        try:
            peers = self.cluster.peering_peers(peering, namespace)
        except Exception:
            logger.exception("could not read the peering object; standing by until it can be read")
            return True
        return outranked(peers, self.settings.peering_priority, self.clock())

    # Watch events, one method per kopf handler.

    def resource_changed(self, kind: type[Resource], body: Mapping[str, Any], logger: Logger) -> None:
        """A ModelDeployment (its reconcile, then its namespace's gateway: the routes) or an ApiTier (the
        gateway, which writes every tier's status)."""
        self.listed.set()
        namespace = body["metadata"].get("namespace")
        if kind is ApiTier:
            self.reconcile_gateway(namespace, logger)
            return
        self.reconcile(kind, body, logger)
        self.gateway_inputs_changed(namespace, logger)

    def secret_changed(self, secret: Mapping[str, Any], logger: Logger) -> None:
        """A Secret of Tollway's own (restored like any child: the gateway's config and Redis password, a
        model's Triton key), or any other: maybe an API key."""
        self.listed.set()
        labels = secret["metadata"].get("labels") or {}
        if labels.get("tollway.dev/gateway") or labels.get(MODEL_LABEL):
            self.child_changed(secret, logger)
        else:
            self.gateway_inputs_changed(secret["metadata"].get("namespace"), logger)

    def child_changed(self, child: Mapping[str, Any], logger: Logger) -> None:
        """A child changed or went away: reconcile what it belongs to (restoring the child)."""
        self.listed.set()
        metadata = child.get("metadata") or {}
        labels = metadata.get("labels") or {}
        if labels.get("tollway.dev/gateway"):
            self.reconcile_gateway(metadata["namespace"], logger)
            return
        owner = labels.get(MODEL_LABEL)
        if owner:
            body = self.cluster.cached_resource(ModelDeployment, metadata["namespace"], owner)
            if body is not None:
                self.reconcile(ModelDeployment, body, logger)

    def is_echo(self, child: Mapping[str, Any]) -> bool:
        """Whether a child's watch event shows only what a reconcile wrote or read last (the echo of its own
        apply): nothing to restore, nothing new to report. Asked on kopf's event loop, before a thread is
        taken: at a thousand new models most child events are such echoes."""
        return self.cluster.is_current(child)

    def gateway_inputs_changed(self, namespace: str | None, logger: Logger) -> None:
        """Something the gateway reads changed (a model, a Secret): reconcile it where there are tiers."""
        if namespace and self.cluster.cached_resources(ApiTier, namespace):
            self.reconcile_gateway(namespace, logger)

    # The reconciles.

    def reconcile(self, kind: type[Resource], body: Mapping[str, Any], logger: Logger) -> None:
        # It may run on another thread, after kopf has reused what it handed over.
        body = copy.deepcopy(dict(body))
        metadata = body.get("metadata") or {}
        namespace, name = str(metadata.get("namespace")), str(metadata.get("name"))

        def step(first: bool) -> bool:
            # A re-run follows an event, which kopf indexed before it called the handler: the cache is fresh.
            current = body if first else self.cluster.cached_resource(kind, namespace, name)
            if current is None:
                return False
            _logged(logger, lambda: self._reconcile_once(kind, current, logger))
            return True

        self.coalescer.run((kind.kind_name, namespace, name), step)

    def reconcile_gateway(self, namespace: str, logger: Logger) -> None:
        """Converge the namespace's gateway (Envoy, ratelimit, Redis, their config) and its tiers' status."""

        def step(_: bool) -> bool:
            _logged(logger, lambda: self._reconcile_gateway_once(namespace, logger))
            return True

        self.coalescer.run(("Gateway", namespace, GATEWAY_NAME), step)

    def _reconcile_once(self, kind: type[Resource], body: Mapping[str, Any], logger: Logger) -> None:
        if (body.get("metadata") or {}).get("deletionTimestamp"):
            return  # children go with their owner (garbage collector); there is nothing to converge
        now = self.clock()
        result = translate(kind, body, now, self.observer.context(kind, body))
        try:
            sent = self.cluster.apply_all(result.manifests)
        except ApplyError as refused:
            status = apply_failed(result.status, str(refused), now)
            write_status(self.cluster, kind, body, status, logger)
            return  # nothing is pruned after a failed apply; the next reconcile tries again
        if sent:
            logger.info("applied %d of %d children", sent, len(result.manifests))
        metadata = body["metadata"]
        if result.stale_kinds:
            removed = self.cluster.prune(
                metadata["namespace"], metadata["uid"], metadata["name"], result.stale_kinds
            )
            if removed:
                logger.info("removed children no longer rendered: %s", ", ".join(removed))
        if result.stale:
            name = metadata["name"]
            removed = self.cluster.prune_named(
                metadata["namespace"], name, f"{MODEL_LABEL}={name}", result.stale
            )
            if removed:
                logger.info("removed children no longer rendered: %s", ", ".join(removed))
        write_status(self.cluster, kind, body, result.status, logger)

    def _reconcile_gateway_once(self, namespace: str, logger: Logger) -> None:
        tiers = self.cluster.cached_resources(ApiTier, namespace)
        models = self.cluster.cached_resources(ModelDeployment, namespace)
        now = self.clock()
        gateway = self.settings.gateway
        served = replace(
            gateway.runtime,
            monitoring=self.observer.monitoring_served(),
            alertmanager_configs=self.observer.alertmanager_configs_served(),
        )
        options = replace(gateway, runtime=served)
        held = self._suspend_compromised_keys(
            namespace, tiers, self.cluster.list_secrets(namespace), now, logger
        )
        fresh = secrets.token_hex(32)  # Redis's password, used only while its Secret does not exist
        result = translate_gateway(
            namespace, tiers + models, held, now, options, network=self.settings.network, fresh=fresh
        )
        error = ""
        try:
            sent = self.cluster.apply_all(result.manifests)
        except ApplyError as refused:
            error = str(refused)
        else:
            if sent:
                logger.info(
                    "gateway of %s: applied %d of %d children", namespace, sent, len(result.manifests)
                )
            removed = self.cluster.prune_named(
                namespace, f"gateway/{GATEWAY_NAME}", f"tollway.dev/gateway={GATEWAY_NAME}", result.stale
            )
            if removed:
                logger.info("gateway of %s: removed %s", namespace, ", ".join(removed))
        self._tell_of_suspensions(result.plan.gateway, now, logger)
        state = GatewayState(
            envoy=self.cluster.deployment_state(namespace, GATEWAY_NAME),
            applied=not error and bool(result.manifests),
            error=error,
        )
        for body in tiers:
            report = result.plan.reports.get(body["metadata"]["name"], TierReport())
            context = Context(
                tier=report,
                gateway=state,
                usage=self.observer.usage(namespace, body, now),
                sla=self.observer.sla(namespace, body, now),
            )
            write_status(self.cluster, ApiTier, body, translate(ApiTier, body, now, context).status, logger)

    def _suspend_compromised_keys(
        self, namespace: str, tiers: list[Body], held: list[Body], now: datetime, logger: Logger
    ) -> list[Body]:
        """Suspend the keys whose alert fires (where their tier asks for it), release lifted ones whose
        alert stopped (translate.suspension), and return the Secrets as they are now marked."""
        alerts = self.observer.key_alerts(namespace, tiers)
        if alerts is None:
            return held
        if not alerts.reachable:
            logger.warning("cannot ask Prometheus which keys to suspend: %s", alerts.error)
            return held
        marks = {mark.secret: mark for mark in suspensions(tiers, held, alerts.firing, now)}
        by_tier = {body["metadata"]["name"]: body for body in tiers}
        for mark in marks.values():
            self.cluster.mark_secret(namespace, mark.secret, mark.labels, mark.annotations)
            logger.info("%s", mark.note)
            tier = by_tier[mark.tier]["metadata"]
            self.cluster.record_event(ApiTier, tier, type=mark.event_type, reason=mark.reason, note=mark.note)
        return [_marked(secret, marks.get(secret["metadata"]["name"])) for secret in held]

    def _tell_of_suspensions(self, gateway: Gateway | None, now: datetime, logger: Logger) -> None:
        """Keep Alertmanager's TollwayKeySuspended firing for each suspended key (its consumer's notice)."""
        url = self.settings.alertmanager_url
        lasting = timedelta(seconds=max(3 * self.settings.resync_seconds, 300))
        alerts = suspended_alerts(gateway, now, lasting)
        if not url or not alerts:
            return
        error = self.telemetry.post_alerts(url, alerts)
        if error:
            logger.warning("cannot tell Alertmanager of %d suspended keys: %s", len(alerts), error)


def _logged(logger: Logger, reconcile: Callable[[], None]) -> None:
    """Run a reconcile; a failure (the API server away, a request refused) is logged with the object it was
    for, since the reconcile may run on a thread of the Coalescer's, where no caller would see it."""
    try:
        reconcile()
    except Exception as error:
        logger.exception("the reconcile failed, the next event or resync tries again: %s", error)


def _marked(secret: Body, mark: SecretMark | None) -> Body:
    """The Secret with the mark's labels and annotations (what the API server holds after the patch)."""
    if mark is None:
        return secret
    metadata = dict(secret["metadata"])
    for field_name, changes in (("labels", mark.labels), ("annotations", mark.annotations)):
        values = {**(metadata.get(field_name) or {}), **changes}
        metadata[field_name] = {key: value for key, value in values.items() if value is not None}
    return {**secret, "metadata": metadata}
