"""What a reconcile needs from outside the process, as protocols, so that a unit test can hand it fakes.

The real ones: `tollway.k8s.cluster.KubeCluster` (the API server, and kopf's watch cache of Tollway's own
resources), `tollway.observe.live.LiveTelemetry` (Triton and Prometheus), and the wall clock (the runner's).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, Literal, Protocol

from tollway.api import Resource
from tollway.ir.state import (
    DeploymentState,
    KeyAlertState,
    MetricsState,
    PodProblem,
    ReadyPod,
    SlaState,
    TritonState,
    UsageState,
)

Clock = Callable[[], datetime]
"""The time now, timezone-aware."""

Body = dict[str, Any]


class Cluster(Protocol):
    """The API server, as the reconciles use it. `apply_all` raises `tollway.k8s.apply.ApplyError` when the
    API server refuses a child for good; every other failure is an exception the caller retries."""

    def list_resources(self, kind: type[Resource], namespace: str | None) -> list[Body]:
        """Every object of `kind` in `namespace` (all namespaces when None), asked of the API server now."""
        ...

    def cached_resources(self, kind: type[Resource], namespace: str) -> list[Body]:
        """The namespace's objects of `kind` as the operator's watch last saw them: no request."""
        ...

    def cached_resource(self, kind: type[Resource], namespace: str, name: str) -> Body | None:
        """The object as the operator's watch last saw it (None: not seen, or gone): no request."""
        ...

    def read_resource(self, kind: type[Resource], namespace: str, name: str) -> Body | None:
        """The object as the API server holds it now; None when it is gone."""
        ...

    def list_secrets(self, namespace: str) -> list[Body]: ...

    def generated_secret(self, namespace: str, name: str) -> Body | None:
        """A Secret Tollway generated (its name and data), as watched, else as the API server holds it."""
        ...

    def mark_secret(
        self,
        namespace: str,
        name: str,
        labels: Mapping[str, str | None],
        annotations: Mapping[str, str | None],
    ) -> None:
        """Set (or with None, remove) labels and annotations on a Secret Tollway does not own (an API
        key's)."""
        ...

    def deployment_state(self, namespace: str, name: str) -> DeploymentState | None: ...

    def pod_problems(self, namespace: str, model: str) -> tuple[PodProblem, ...]:
        """Why the model's pods do not run (stuck containers, no node that fits), as last watched."""
        ...

    def ready_pods(self) -> dict[tuple[str, str], tuple[ReadyPod, ...]]:
        """Every model's ready pods by (namespace, model), as last watched."""
        ...

    def raise_replicas(self, namespace: str, name: str, replicas: int) -> bool:
        """Set the Deployment's replica count to `replicas` if it has fewer; whether it had."""
        ...

    def served(self, api_version: str, kind: str) -> bool:
        """Whether the API server serves the kind (a CRD such as prometheus-operator's may be absent)."""
        ...

    def apply_all(self, manifests: Iterable[Mapping[str, Any]]) -> int:
        """Make the cluster hold every manifest, in order; the number of writes sent (0: all were current)."""
        ...

    def is_current(self, child: Mapping[str, Any]) -> bool:
        """Whether a watched child is at the version that `apply_all` last wrote or found current."""
        ...

    def prune(
        self, namespace: str, owner_uid: str, model: str, kinds: Iterable[tuple[str, str]]
    ) -> list[str]:
        """Delete the model's children of these (apiVersion, kind)s; "Kind/name" of each one deleted."""
        ...

    def prune_named(
        self, namespace: str, owner: str, label_selector: str, stale: Iterable[tuple[str, str, str]]
    ) -> list[str]:
        """Delete these (apiVersion, kind, name)s where they carry the selector's labels; `owner` (a model's
        name, or "gateway/NAME") lets the watches skip what they show does not exist."""
        ...

    def apply_status(
        self, kind: type[Resource], metadata: Mapping[str, Any], status: Mapping[str, Any]
    ) -> bool:
        """Write the status fields Tollway owns; False when the object is gone."""
        ...

    def record_event(
        self,
        kind: type[Resource],
        metadata: Mapping[str, Any],
        *,
        type: Literal["Normal", "Warning"],
        reason: str,
        note: str,
    ) -> None: ...

    def peering_peers(self, name: str, namespace: str | None) -> dict[str, dict[str, Any]]:
        """kopf's peering object's status: identity → priority, lastseen, lifetime."""
        ...


class Telemetry(Protocol):
    """Triton, Prometheus and Alertmanager: each answers with what it could not read instead of raising."""

    def model_state(self, url: str, model: str, versions: Iterable[str], admin_key: str) -> TritonState: ...

    def model_metrics(self, url: str, namespace: str, model: str) -> MetricsState: ...

    def queue_depth(self, url: str, model: str) -> float | None:
        """The requests waiting for `model` in the Triton whose metrics page is at `url`; None: unread."""
        ...

    def tier_usage(self, url: str, namespace: str, tier: str, since_seconds: int) -> UsageState: ...

    def tier_sla(self, url: str, namespace: str, tier: str, start: int, end: int) -> SlaState:
        """The tier's SLA counts between the unix seconds `start` and `end`."""
        ...

    def key_alerts(self, url: str, namespace: str) -> KeyAlertState:
        """The namespace's keys whose TollwayKeyPatternChanged alert fires now."""
        ...

    def post_alerts(self, url: str, alerts: list[dict[str, Any]]) -> str:
        """Send alerts to Alertmanager; what went wrong, or "" when it took them."""
        ...
