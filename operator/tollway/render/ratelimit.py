"""Gateway IR → the envoyproxy/ratelimit service's configuration (one domain, one counter tree per limit)."""

from __future__ import annotations

from typing import Any

from tollway.ir.gateway import LIMIT_KINDS, Gateway
from tollway.render.envoy import RATELIMIT_DOMAIN, limits_for

UNITS = {"rpm": "minute", "tpm": "minute", "rpd": "day", "tpd": "day"}


def ratelimit_config(gateway: Gateway) -> dict[str, Any]:
    """Descriptors (LIMIT=SCOPE, consumer) → a fixed-window counter per consumer, in Redis.

    SCOPE is a tier ('pro': shared by the tier's models) or a tier and model ('pro/chat': a per-model
    override). The gateway sends a descriptor only for the limits that apply, so unlimited needs no entry.
    """
    limits: dict[tuple[str, str], int] = {}
    for tier in gateway.tiers:
        for model in gateway.models:
            for limit, (scope, value) in limits_for(tier, model.name).items():
                limits[(limit, scope)] = value
        for limit in LIMIT_KINDS:  # the tier's own limits, also with no model in the namespace yet
            if getattr(tier.quota, limit) is not None:
                limits[(limit, tier.name)] = getattr(tier.quota, limit)
    return {
        "domain": RATELIMIT_DOMAIN,
        "descriptors": [
            {
                "key": limit,
                "value": scope,
                "descriptors": [
                    {"key": "consumer", "rate_limit": {"unit": UNITS[limit], "requests_per_unit": value}}
                ],
            }
            for (limit, scope), value in sorted(limits.items())
        ],
    }
