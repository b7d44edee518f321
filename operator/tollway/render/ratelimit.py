"""Gateway IR → the envoyproxy/ratelimit service's configuration (one domain, one counter tree per limit)."""

from __future__ import annotations

from typing import Any

from tollway.ir.gateway import Gateway
from tollway.ir.names import RATELIMIT_DOMAIN

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
    return {"domain": RATELIMIT_DOMAIN, "descriptors": limited}
