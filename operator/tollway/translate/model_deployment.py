"""A valid ModelDeployment → its children (manifests) and its status."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from tollway.api import Condition, ModelDeployment
from tollway.api.model_deployment import Endpoint, VersionStatus
from tollway.ir.state import MetricsState, ServingState, TritonState
from tollway.translate.sla import decimal_text

Make = Callable[..., Condition]
TRITON_STATES = {
    "READY": "Ready",
    "LOADING": "Loading",
    "UNLOADING": "Unavailable",
    "UNAVAILABLE": "Unavailable",
}


def latest_version(resource: ModelDeployment) -> str:
    """The `latest` alias, else the highest listed version."""
    return resource.spec.aliases.get("latest") or max(
        (entry.version for entry in resource.spec.versions), key=int
    )


def endpoints(resource: ModelDeployment) -> list[Endpoint]:
    """The gateway's public paths for this model: its default (latest), each alias, each pinned version."""
    model = resource.model_name
    found = [Endpoint(name="latest", version=latest_version(resource), path=f"/v1/models/{model}/infer")]
    found += [
        Endpoint(name=alias, version=version, path=f"/v1/models/{model}:{alias}/infer")
        for alias, version in sorted(resource.spec.aliases.items())
        if alias != "latest"
    ]
    found += [
        Endpoint(
            name=f"v{entry.version}",
            version=entry.version,
            path=f"/v1/models/{model}/versions/{entry.version}/infer",
        )
        for entry in resource.spec.versions
    ]
    return found


def version_statuses(
    resource: ModelDeployment, triton_state: TritonState | None, now: datetime
) -> list[VersionStatus]:
    reported = {item.version: item for item in (triton_state.versions if triton_state else ())}
    statuses = []
    for entry in resource.spec.versions:
        sunset = entry.deprecation.sunset if entry.deprecation else None
        if sunset is not None and now.date() >= date.fromisoformat(sunset):
            statuses.append(
                VersionStatus(version=entry.version, state="Sunset", message=f"sunset on {sunset}")
            )
            continue
        state = reported.get(entry.version)
        if state is None or not (triton_state and triton_state.reachable):
            statuses.append(VersionStatus(version=entry.version, state="Unknown"))
        else:
            statuses.append(
                VersionStatus(
                    version=entry.version,
                    state=TRITON_STATES.get(state.state, "Unknown"),
                    message=state.reason,
                )
            )
    return statuses


def conditions(
    observed: ServingState, versions: list[VersionStatus], make: Make, sleeps: bool = False
) -> list[Condition]:
    """`sleeps`: the model scales to zero (minReplicas 0), so no replica at all is its idle state."""
    return [
        _ready(observed, versions, make, sleeps),
        _progressing(observed, make),
        _degraded(observed, versions, make),
    ]


def _ready(observed: ServingState, versions: list[VersionStatus], make: Make, sleeps: bool) -> Condition:
    deployment, triton_state = observed.deployment, observed.triton
    if deployment is None:
        return make("Ready", "False", "Creating", "the Triton Deployment does not exist yet")
    if sleeps and deployment.replicas == 0:
        return make(
            "Ready",
            "True",
            "ScaledToZero",
            "idle at zero replicas: the gateway holds the next request while it wakes the model",
        )
    if deployment.available_replicas < 1:
        return make(
            "Ready",
            "False",
            "DeploymentUnavailable",
            f"{deployment.available_replicas}/{deployment.replicas} Triton replicas available",
        )
    if triton_state is None or not triton_state.reachable:
        error = triton_state.error if triton_state else "not asked"
        return make("Ready", "False", "TritonUnreachable", f"cannot ask Triton for model readiness: {error}")
    waiting = [
        f"version {item.version} is {item.state}"
        for item in versions
        if item.state not in ("Ready", "Sunset")
    ]
    if waiting:
        return make("Ready", "False", "VersionsNotReady", "; ".join(waiting))
    return make(
        "Ready", "True", "Serving", f"{deployment.available_replicas} replicas serve every listed version"
    )


def _progressing(observed: ServingState, make: Make) -> Condition:
    deployment = observed.deployment
    if deployment is None:
        return make("Progressing", "True", "Creating", "creating the Triton Deployment")
    rolling = (
        deployment.observed_generation < deployment.generation
        or deployment.updated_replicas < deployment.replicas
        or deployment.available_replicas < deployment.replicas
    )
    if rolling:
        return make(
            "Progressing",
            "True",
            "RollingOut",
            f"{deployment.updated_replicas}/{deployment.replicas} replicas updated, "
            f"{deployment.available_replicas} available",
        )
    return make("Progressing", "False", "Stable", "every replica runs the current spec")


def _degraded(observed: ServingState, versions: list[VersionStatus], make: Make) -> Condition:
    if observed.pod_problems:
        problem = observed.pod_problems[0]
        return make("Degraded", "True", problem.reason, problem.message)
    failed = [f"version {item.version}: {item.message}" for item in versions if item.state == "Unavailable"]
    if failed:
        return make("Degraded", "True", "VersionFailed", "; ".join(failed))
    if observed.deployment is not None and observed.deployment.progress_deadline_exceeded:
        return make(
            "Degraded", "True", "ProgressDeadlineExceeded", "the rollout of the Triton Deployment stalled"
        )
    return make("Degraded", "False", "AsExpected")


def live_metrics(
    observed: MetricsState | None, previous: dict[str, Any] | None, now: datetime, make: Make
) -> tuple[dict[str, Any] | None, list[Condition]]:
    """status.metrics and the MetricsAvailable condition; nothing when no Prometheus is configured.

    When Prometheus cannot be asked the last figures stay, with the `observedAt` of when they were read.
    """
    if observed is None:
        return previous, []
    if not observed.reachable:
        reason = f"cannot read metrics from Prometheus: {observed.error}"
        return previous, [make("MetricsAvailable", "False", "PrometheusUnreachable", reason)]
    figures = {
        **observed.values,
        "observed_at": observed.observed_at or now.isoformat().replace("+00:00", "Z"),
    }
    return figures, [make("MetricsAvailable", "True", "Current", "figures read from Prometheus")]


def live_cost(
    resource: ModelDeployment, observed: MetricsState | None, previous: dict[str, Any] | None, now: datetime
) -> dict[str, Any] | None:
    """status.cost: the serving cost's figures, in spec.cost's currency; nothing without spec.cost. When
    Prometheus cannot be asked the last figures stay (the MetricsAvailable condition says why)."""
    cost = resource.spec.cost
    if cost is None:
        return None
    if observed is None or not observed.reachable:
        return previous
    return {
        **{field: decimal_text(Decimal(str(value))) for field, value in observed.cost.items()},
        "currency": cost.currency,
        "observed_at": observed.observed_at or now.isoformat().replace("+00:00", "Z"),
    }


def status(
    resource: ModelDeployment,
    observed: ServingState,
    now: datetime,
    make: Make,
    previous: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`previous`: the status the resource holds, whose figures stay when Prometheus cannot be asked."""
    previous = previous or {}
    versions = version_statuses(resource, observed.triton, now)
    deployment = observed.deployment
    metrics, metrics_condition = live_metrics(observed.metrics, previous.get("metrics"), now, make)
    cost = live_cost(resource, observed.metrics, previous.get("cost"), now)
    found = {
        "observed_generation": resource.metadata.generation,
        "conditions": conditions(observed, versions, make, resource.spec.autoscaling.min_replicas == 0)
        + metrics_condition,
        "replicas": deployment.replicas if deployment else 0,
        "ready_replicas": deployment.ready_replicas if deployment else 0,
        "endpoints": endpoints(resource),
        "versions": versions,
    }
    if metrics is not None:
        found["metrics"] = metrics
    if cost is not None:
        found["cost"] = cost
    return found
