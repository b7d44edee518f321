"""Gateway IR → the envoyproxy/ratelimit service's configuration (one domain, one counter tree per limit)."""

from __future__ import annotations

from typing import Any

from tollway.ir.gateway import Gateway
from tollway.ir.names import ADDRESS_DESCRIPTOR, RATELIMIT_DOMAIN, UNAUTHENTICATED_SCOPE, counter_name

UNITS = {"rpm": "minute", "tpm": "minute", "rpd": "day", "tpd": "day"}


def ratelimit_config(gateway: Gateway) -> dict[str, Any]:
    """Descriptors (LIMIT=SCOPE, consumer) → a fixed-window counter per consumer, in Redis.

    SCOPE is a tier ('pro': shared by the tier's models) or a tier and model ('pro/chat': a per-model
    override). The gateway sends a descriptor only for the limits that apply, so unlimited needs no entry.
    """
    limits = {
        (limit.kind, limit.scope): limit.value
        for tier in gateway.tiers
        for limit in (
            *tier.limits,  # the tier's own, also with no model in the namespace yet
            *(limit for held in tier.model_limits for limit in held.limits),
        )
    }
    limited = [
        {
            "key": limit,
            "value": scope,
            "descriptors": [
                {
                    "key": "consumer",
                    "rate_limit": {"unit": UNITS[limit], "requests_per_unit": value},
                    "detailed_metric": True,
                }
            ],
        }
        for (limit, scope), value in sorted(limits.items())
    ]
    return {"domain": RATELIMIT_DOMAIN, "descriptors": limited + _per_address(gateway)}


def _per_address(gateway: Gateway) -> list[dict[str, Any]]:
    """(ip=SCOPE, remote_address) → a requests-per-minute counter per client address: SCOPE is a tier with
    a per-address limit, or UNAUTHENTICATED_SCOPE (requests without a valid credential). No detailed
    metric: one per address would be unbounded."""
    scopes = {counter_name(tier.name): tier.per_ip_rpm for tier in gateway.tiers if tier.per_ip_rpm}
    if gateway.runtime.unauthenticated_rpm_per_ip:
        scopes[UNAUTHENTICATED_SCOPE] = gateway.runtime.unauthenticated_rpm_per_ip
    return [
        {
            "key": ADDRESS_DESCRIPTOR,
            "value": scope,
            "descriptors": [
                {"key": "remote_address", "rate_limit": {"unit": "minute", "requests_per_unit": value}}
            ],
        }
        for scope, value in sorted(scopes.items())
    ]
