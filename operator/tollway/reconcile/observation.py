"""What a translation needs besides the resource: the cluster's, Triton's and Prometheus's view of it."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import fields, replace
from datetime import datetime
from typing import Any

from tollway.api import ApiTier, ModelDeployment, Resource
from tollway.api.parse import InvalidResource, parse
from tollway.ir.names import TRITON_KEY, serving_children
from tollway.ir.state import KeyAlertState, MetricsState, ServingState, SlaCounts, SlaState, UsageState
from tollway.reconcile.cluster import Clock, Cluster, Telemetry
from tollway.reconcile.floors import Floors
from tollway.render.monitoring import MONITORING_API
from tollway.render.notices import ALERTMANAGER_CONFIG_API
from tollway.settings import Settings
from tollway.translate import Context, kept_or_fresh
from tollway.translate.serving import PROMETHEUS_URL, tier_priority
from tollway.translate.sla import period_bounds, period_of

#: A tier's usage counts in status, in wire form.
USAGE_COUNTS = ("consumers", "requests", "inputTokens", "outputTokens")


class Observer:
    def __init__(
        self, settings: Settings, cluster: Cluster, telemetry: Telemetry, clock: Clock, floors: Floors
    ) -> None:
        self.settings, self.cluster, self.telemetry, self.clock = settings, cluster, telemetry, clock
        self.floors = floors

    def context(self, kind: type[Resource], body: Mapping[str, Any]) -> Context:
        """Everything the translation of `body` needs from the cluster and from Triton."""
        base = Context(storage_initializer_image=self.settings.storage_initializer_image)
        if kind is not ModelDeployment:
            return base
        try:
            resource = parse(ModelDeployment, body)
        except InvalidResource:
            return base  # the translation reports it; there is nothing to observe for a spec not applied
        namespace = resource.metadata.namespace
        tiers = self.cluster.cached_resources(ApiTier, namespace)
        service = serving_children(resource.metadata.name)["triton"]
        deployment = self.cluster.deployment_state(namespace, service)
        # Triton's admin key: the one its Secret holds, or a new one for a Secret not made yet.
        held = self.cluster.generated_secret(namespace, service)
        key = kept_or_fresh([held] if held else [], service, TRITON_KEY, secrets.token_hex(32))
        triton = None
        if deployment is not None:
            address = self.settings.triton_address.format(service=service, namespace=namespace)
            versions = [entry.version for entry in resource.spec.versions]
            triton = self.telemetry.model_state(address, resource.model_name, versions, key)
        problems = self.cluster.pod_problems(namespace, resource.metadata.name)
        metrics = self._metrics(namespace, resource.model_name, body.get("status") or {})
        return Context(
            tier_priorities=tuple(tier_priority(tier) for tier in tiers),
            storage_initializer_image=self.settings.storage_initializer_image,
            tollway_image=self.settings.tollway_image,
            redis_image=self.settings.gateway.runtime.images.redis,
            prometheus_url=self.settings.prometheus_url or PROMETHEUS_URL,
            monitoring=self.monitoring_served(),
            network=self.settings.network,
            admin_key=key,
            floor=self.floors.replicas((namespace, resource.metadata.name)),
            serving=ServingState(
                deployment=deployment, pod_problems=problems, triton=triton, metrics=metrics
            ),
        )

    def monitoring_served(self) -> bool:
        """Whether the cluster serves prometheus-operator's ServiceMonitor and PrometheusRule."""
        return all(self.cluster.served(MONITORING_API, kind) for kind in ("ServiceMonitor", "PrometheusRule"))

    def alertmanager_configs_served(self) -> bool:
        return self.cluster.served(ALERTMANAGER_CONFIG_API, "AlertmanagerConfig")

    def key_alerts(self, namespace: str, tiers: Iterable[Mapping[str, Any]]) -> KeyAlertState | None:
        """The namespace's firing key alerts, asked only where a tier suspends keys on them (None: none
        does, or there is no Prometheus)."""
        suspending = any(
            (((tier.get("spec") or {}).get("auth") or {}).get("apiKeys") or {}).get("suspendOnCompromise")
            for tier in tiers
        )
        if not self.settings.prometheus_url or not suspending:
            return None
        return self.telemetry.key_alerts(self.settings.prometheus_url, namespace)

    def usage(self, namespace: str, tier: Mapping[str, Any], now: datetime) -> UsageState | None:
        """A tier's use today from Prometheus, at most once per resync (what status holds when younger)."""
        if not self.settings.prometheus_url:
            return None
        previous = (tier.get("status") or {}).get("usage")
        if previous is not None and self._fresh(previous):
            counts = {_snake(key): value for key, value in previous.items() if key in USAGE_COUNTS}
            return UsageState(reachable=True, observed_at=str(previous["observedAt"]), **counts)
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        since = int((now - midnight).total_seconds())
        return self.telemetry.tier_usage(
            self.settings.prometheus_url, namespace, tier["metadata"]["name"], since
        )

    def sla(self, namespace: str, tier: Mapping[str, Any], now: datetime) -> SlaState | None:
        """A tier's SLA counts this month from Prometheus, at most once per resync (what status holds when
        younger); None without an SLA or a Prometheus."""
        if not self.settings.prometheus_url or not (tier.get("spec") or {}).get("sla"):
            return None
        period = period_of(now)
        previous = (tier.get("status") or {}).get("sla")
        if previous is not None and previous.get("period") == period and self._fresh(previous):
            counts = SlaCounts(
                **{field.name: previous.get(_camel(field.name), 0) for field in fields(SlaCounts)}
            )
            return SlaState(
                reachable=True, period=period, counts=counts, observed_at=str(previous["observedAt"])
            )
        start, _ = period_bounds(period)
        state = self.telemetry.tier_sla(
            self.settings.prometheus_url,
            namespace,
            tier["metadata"]["name"],
            int(start.timestamp()),
            int(now.timestamp()),
        )
        return replace(state, period=period)

    def _metrics(self, namespace: str, model: str, status: Mapping[str, Any]) -> MetricsState | None:
        """The model's figures (and cost's) from Prometheus, at most once per resync (the ones in status when
        younger)."""
        if not self.settings.prometheus_url:
            return None
        previous = status.get("metrics")
        if previous is not None and self._fresh(previous):
            values = {_snake(key): value for key, value in previous.items() if key != "observedAt"}
            cost = {
                _snake(key): float(value)
                for key, value in (status.get("cost") or {}).items()
                if key not in ("currency", "observedAt")
            }
            return MetricsState(
                reachable=True, values=values, cost=cost, observed_at=str(previous["observedAt"])
            )
        return self.telemetry.model_metrics(self.settings.prometheus_url, namespace, model)

    def _fresh(self, previous: Mapping[str, Any]) -> bool:
        """Whether figures in status are younger than a resync (then they are not read again, so that writing
        them, a watch event, does not bring about the next read)."""
        if not previous.get("observedAt"):
            return False
        observed = datetime.fromisoformat(str(previous["observedAt"]).replace("Z", "+00:00"))
        return (self.clock() - observed).total_seconds() < self.settings.resync_seconds


def _camel(name: str) -> str:
    """'input_tokens' → 'inputTokens' (model field names → status fields in wire form)."""
    first, *rest = name.split("_")
    return first + "".join(part.capitalize() for part in rest)


def _snake(name: str) -> str:
    """'p99Ms' → 'p99_ms' (status fields in wire form → model field names)."""
    return "".join(f"_{char.lower()}" if char.isupper() else char for char in name)
