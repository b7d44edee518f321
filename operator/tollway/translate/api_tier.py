"""An ApiTier's status: whether its rules are live in the namespace's gateway, and its consumers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tollway.api import ApiTier
from tollway.api.base import Condition
from tollway.ir.observed import GatewayState
from tollway.translate.gateway import GATEWAY_NAME, TierReport

Make = Callable[..., Condition]


def status(resource: ApiTier, report: TierReport, gateway: GatewayState, make: Make) -> dict[str, Any]:
    found = {
        "observed_generation": resource.metadata.generation,
        "conditions": [_ready(gateway, make), _degraded(report, make)],
        "consumers": report.consumers,
    }
    if report.mtls_port is not None:
        found["mtls_port"] = report.mtls_port
    return found


def _ready(gateway: GatewayState, make: Make) -> Condition:
    if not gateway.applied:
        reason = "ApplyFailed" if gateway.error else "Pending"
        return make(
            "Ready", "False", reason, gateway.error or "the gateway's configuration is not applied yet"
        )
    envoy = gateway.envoy
    if envoy is None or envoy.available_replicas < 1:
        available = f"{envoy.available_replicas}/{envoy.replicas}" if envoy else "0"
        return make(
            "Ready",
            "False",
            "GatewayUnavailable",
            f"rules are in the configuration of gateway {GATEWAY_NAME}, but {available} Envoy replicas "
            "are available",
        )
    return make(
        "Ready",
        "True",
        "Applied",
        f"rules are in the configuration of gateway {GATEWAY_NAME} ({envoy.available_replicas} Envoy "
        "replicas available; each reloads it when the kubelet updates the mounted Secret, within a minute)",
    )


def _degraded(report: TierReport, make: Make) -> Condition:
    if report.problems:
        reason = "UnknownModel" if report.problems[0].startswith("spec.models") else "CredentialProblem"
        return make("Degraded", "True", reason, "; ".join(report.problems))
    return make("Degraded", "False", "AsExpected")
