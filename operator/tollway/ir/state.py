"""What the cluster and Triton show right now: the input of status, never of manifests."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class DeploymentState:
    generation: int
    observed_generation: int
    replicas: int
    ready_replicas: int
    available_replicas: int
    updated_replicas: int
    progress_deadline_exceeded: bool = False


@dataclass(frozen=True)
class PodProblem:
    """Why a pod does not run: ImagePullBackOff, ErrImagePull, CrashLoopBackOff, Unschedulable …"""

    reason: str
    message: str


@dataclass(frozen=True)
class VersionState:
    version: str
    state: str
    """Triton's word: READY, LOADING, UNLOADING, UNAVAILABLE; or MISSING when Triton does not list it."""
    reason: str = ""


@dataclass(frozen=True)
class TritonState:
    reachable: bool
    error: str = ""
    versions: tuple[VersionState, ...] = ()


@dataclass(frozen=True)
class MetricsState:
    """What Prometheus answered for a model: figures by status field name, or why it could not."""

    reachable: bool
    error: str = ""
    values: dict[str, float] = field(default_factory=dict)
    cost: dict[str, float] = field(default_factory=dict)
    """The serving cost's figures (status.cost), by field name; none without spec.cost or traffic."""
    observed_at: str | None = None
    """When the figures were read; None: now. Figures younger than a resync are not read again, so that
    writing them (an event) does not bring about the next read."""


@dataclass(frozen=True)
class UsageState:
    """A tier's use of the gateway today (since 00:00 UTC), from Prometheus; or why it could not be read."""

    reachable: bool
    error: str = ""
    consumers: int = 0
    """Consumers that sent at least one request."""
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    observed_at: str | None = None
    """When read; None: now (see MetricsState)."""


@dataclass(frozen=True)
class KeyPattern:
    """What a key's last hour looked like (its key-compromise signals), when its alert fired."""

    networks: int = 0
    new_networks: int = 0
    agents: int = 0


@dataclass(frozen=True)
class KeyAlertState:
    """The namespace's keys whose TollwayKeyPatternChanged alert fires now, by (tier, consumer as the
    counters write it), from Prometheus; or why it could not be asked."""

    reachable: bool
    error: str = ""
    firing: Mapping[tuple[str, str], KeyPattern] = field(default_factory=dict)


@dataclass(frozen=True)
class GatewayState:
    """The namespace's gateway as the cluster shows it: its Envoy Deployment, if there is one yet."""

    envoy: DeploymentState | None = None
    applied: bool = False
    """Whether the configuration with the current rules was accepted by the API server."""
    error: str = ""


@dataclass(frozen=True)
class ServingState:
    deployment: DeploymentState | None = None
    pod_problems: tuple[PodProblem, ...] = ()
    triton: TritonState | None = None
    metrics: MetricsState | None = None
    """None when the operator has no Prometheus to ask."""


@dataclass(frozen=True)
class ReadyPod:
    """A model's pod that takes requests: its name, and its address."""

    name: str
    ip: str


@dataclass(frozen=True)
class SlaCounts:
    """What the gateway counted for a tier (or one of its consumers) over a period, outside maintenance: the
    requests that count for availability, those that failed, and (per tier only) those answered within the
    latency threshold out of those measured; and the tokens used (maintenance included: they are billed)."""

    requests: float = 0
    errors: float = 0
    latency_within: float = 0
    latency_measured: float = 0
    input_tokens: float = 0
    output_tokens: float = 0


@dataclass(frozen=True)
class SlaState:
    """A tier's SLA counts of the current calendar month so far, from Prometheus; or why it could not."""

    reachable: bool
    error: str = ""
    period: str = ""
    """YYYY-MM."""
    counts: SlaCounts = SlaCounts()
    observed_at: str | None = None
    """When read; None: now (see MetricsState)."""


@dataclass(frozen=True)
class CostCounts:
    """What a model ran and served over a period: its replica-hours (from Triton's own metrics) and, per tier,
    the input and output tokens the gateway counted for it."""

    replica_hours: float = 0
    input_tokens: dict[str, float] = field(default_factory=dict)
    output_tokens: dict[str, float] = field(default_factory=dict)
