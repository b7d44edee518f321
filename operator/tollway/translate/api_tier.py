"""An ApiTier's status: whether its rules are live in the namespace's gateway, and its consumers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from datetime import datetime
from decimal import Decimal
from typing import Any

from tollway.api import ApiTier
from tollway.api.base import Condition
from tollway.api.sla import Sla as SlaSpec
from tollway.ir.names import GATEWAY_NAME
from tollway.ir.state import GatewayState, SlaState, UsageState
from tollway.translate.gateway import TierReport
from tollway.translate.sla import decimal_text, plan_sla, settle, usage_cost

Make = Callable[..., Condition]
#: The Degraded reason of a tier's first problem, by the field it names (else a credential's).
PROBLEM_REASONS = (("spec.models", "UnknownModel"), ("spec.pricing.currency", "CurrencyMismatch"))


def status(
    resource: ApiTier,
    report: TierReport,
    gateway: GatewayState,
    make: Make,
    *,
    usage: UsageState | None = None,
    previous_usage: dict[str, Any] | None = None,
    sla: SlaState | None = None,
    previous_sla: dict[str, Any] | None = None,
    now: datetime,
) -> dict[str, Any]:
    conditions = [_ready(gateway, make), _degraded(report, make)]
    found: dict[str, Any] = {
        "observed_generation": resource.metadata.generation,
        "consumers": report.consumers,
        "suspended_keys": report.suspended_keys,
    }
    if report.mtls_port is not None:
        found["mtls_port"] = report.mtls_port
    if usage is not None and usage.reachable:
        found["usage"] = _usage(resource, usage, now)
        conditions.append(make("MetricsAvailable", "True", "Current", "usage read from Prometheus"))
    elif usage is not None:
        reason = f"cannot read usage from Prometheus: {usage.error}"
        conditions.append(make("MetricsAvailable", "False", "PrometheusUnreachable", reason))
        if previous_usage is not None:
            found["usage"] = previous_usage
    if sla is not None and sla.reachable and resource.spec.sla is not None:
        found["sla"] = _sla(resource, resource.spec.sla, sla, now)
    elif sla is not None and previous_sla is not None:
        found["sla"] = previous_sla  # Prometheus did not answer: the last figures stay
    found["conditions"] = conditions
    return found


def _sla(resource: ApiTier, spec: SlaSpec, state: SlaState, now: datetime) -> dict[str, Any]:
    counts, pricing = state.counts, resource.spec.pricing
    settled = settle(plan_sla(spec), counts, usage_cost(pricing, counts.input_tokens, counts.output_tokens))
    figures = {
        "availability": settled.availability,
        "latency_attainment": settled.latency_attainment,
        "error_budget_remaining": settled.error_budget_remaining,
        "credit_percent": settled.credit_percent,
        "credit": settled.credit,
    }
    totals = {field.name: round(getattr(counts, field.name)) for field in fields(counts)}
    return {
        "period": state.period,
        **{name: decimal_text(value) for name, value in figures.items() if value is not None},
        "currency": pricing.currency,
        **totals,
        "observed_at": state.observed_at or now.isoformat().replace("+00:00", "Z"),
    }


def _usage(resource: ApiTier, usage: UsageState, now: datetime) -> dict[str, Any]:
    pricing = resource.spec.pricing
    cost = usage_cost(pricing, usage.input_tokens, usage.output_tokens)
    moment = usage.observed_at or now.isoformat().replace("+00:00", "Z")
    return {
        "consumers": usage.consumers,
        "requests": usage.requests,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cost": format(cost.quantize(Decimal("0.000001")).normalize(), "f"),
        "currency": pricing.currency,
        "observed_at": moment,
    }


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
        first = report.problems[0]
        reason = next(
            (reason for field, reason in PROBLEM_REASONS if first.startswith(field)), "CredentialProblem"
        )
        return make("Degraded", "True", reason, "; ".join(report.problems))
    return make("Degraded", "False", "AsExpected")
