"""Gateway IR → the envoyproxy/ratelimit service's configuration (one domain, one counter tree per limit)."""

from __future__ import annotations

from typing import Any

from tollway.ir.gateway import Gateway
from tollway.ir.names import (
    ADDRESS_DESCRIPTOR,
    KEY_SIGNALS,
    NEW_KEYS_SIGNAL,
    RATELIMIT_DOMAIN,
    UNAUTHENTICATED_SCOPE,
    counter_name,
)

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
    return {
        "domain": RATELIMIT_DOMAIN,
        "descriptors": limited + _per_address(gateway) + _key_signals(gateway),
    }


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


SIGNAL_PERIODS = {"networks": "hour", "new_networks": "month", "agents": "hour"}
"""How long each signal remembers a value: networks and agents per hour; networks "never seen" for a key are
those not seen this calendar month (the longest window the service keeps cheaply: a key's known networks
are new again once a month, which alone never makes its alert fire)."""


def _key_signals(gateway: Gateway) -> list[dict[str, Any]]:
    """(SIGNAL=tier, consumer, value) → a limit of one per period, in shadow mode: never refused, and the
    first sighting of each value in the period is the one `within_limit` counts, so that count, per
    consumer (value_to_metric puts the consumer into the statistic's name), is the number of distinct
    values in the period. New keys the other way round: (new_keys=tier, network, consumer), a day."""
    trees = [(signal, "consumer", counted, SIGNAL_PERIODS[signal]) for signal, counted in KEY_SIGNALS.items()]
    trees.append((NEW_KEYS_SIGNAL, "network", "consumer", "day"))  # distinct new keys per network
    return [
        {
            "key": signal,
            "value": counter_name(tier.name),
            "descriptors": [
                {
                    "key": by,
                    "value_to_metric": True,
                    "descriptors": [
                        {
                            "key": counted,
                            "rate_limit": {"unit": period, "requests_per_unit": 1},
                            "shadow_mode": True,
                        }
                    ],
                }
            ],
        }
        for tier in gateway.tiers
        if tier.key_signals is not None
        for signal, by, counted, period in trees
    ]
