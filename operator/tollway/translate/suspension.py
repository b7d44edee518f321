"""Which API keys the operator suspends, and which lifted suspensions it lets go, from the namespace's firing
key alerts: pure, so a unit test states each case; the reconcile writes the marks and records the events."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from tollway.api import ApiTier
from tollway.api.parse import InvalidResource, parse
from tollway.ir.gateway import Gateway
from tollway.ir.names import KEY_ALERT, KEY_SUSPENDED_ALERT, counter_name
from tollway.ir.state import KeyPattern
from tollway.translate.gateway import (
    CONSUMER_LABEL,
    SUSPENDED_LABEL,
    SUSPENDED_REASON,
    key_claimants,
)

SUSPENDED_AT = "tollway.dev/suspended-at"
"""On a key's Secret: when the operator suspended it (RFC 3339)."""


@dataclass(frozen=True)
class SecretMark:
    """Labels and annotations to set on one key's Secret (None: remove), and the event that says why."""

    secret: str
    tier: str
    consumer: str
    labels: Mapping[str, str | None]
    annotations: Mapping[str, str | None]
    reason: str
    """The event's reason: KeySuspended or KeyWatchedAgain."""
    note: str

    @property
    def event_type(self) -> Literal["Normal", "Warning"]:
        return "Warning" if self.reason == "KeySuspended" else "Normal"


def suspensions(
    tier_documents: Iterable[Mapping[str, Any]],
    secrets: Iterable[Mapping[str, Any]],
    firing: Mapping[tuple[str, str], KeyPattern],
    now: datetime,
) -> list[SecretMark]:
    """Suspend each key whose alert fires, where its tier asks for it (spec.auth.apiKeys.suspendOnCompromise)
    and nobody lifted a suspension of it; release each lifted key whose alert has stopped (its label goes,
    so the next alert suspends it again). The key's tier is the first by priority that selects it, as for
    the gateway; invalid tiers are left out, as from the gateway."""
    ordered = sorted(_valid(tier_documents), key=lambda tier: (tier.spec.priority, tier.metadata.name))
    marks = []
    for secret in secrets:
        meta = secret["metadata"]
        labels = meta.get("labels") or {}
        claimants = key_claimants(ordered, labels)
        if not claimants:
            continue
        tier, name = claimants[0], str(meta["name"])
        consumer = labels.get(CONSUMER_LABEL) or name
        pattern = firing.get((tier.metadata.name, counter_name(consumer)))
        state = labels.get(SUSPENDED_LABEL)
        api_keys = tier.spec.auth.api_keys
        opted_in = api_keys is not None and api_keys.suspend_on_compromise
        if pattern is not None and opted_in and state not in ("true", "lifted"):
            why = _why(pattern)
            marks.append(
                SecretMark(
                    secret=name,
                    tier=tier.metadata.name,
                    consumer=consumer,
                    labels={SUSPENDED_LABEL: "true"},
                    annotations={
                        SUSPENDED_REASON: why,
                        SUSPENDED_AT: _rfc3339(now),
                    },
                    reason="KeySuspended",
                    note=f'Secret "{name}" (consumer {consumer}) suspended: {why}. Lift it with the label '
                    f"{SUSPENDED_LABEL}=lifted",
                )
            )
        elif pattern is None and state == "lifted":
            marks.append(
                SecretMark(
                    secret=name,
                    tier=tier.metadata.name,
                    consumer=consumer,
                    labels={SUSPENDED_LABEL: None},
                    annotations={SUSPENDED_REASON: None, SUSPENDED_AT: None},
                    reason="KeyWatchedAgain",
                    note=f'Secret "{name}" (consumer {consumer}): its alert has stopped; the lifted '
                    "suspension is cleared and the key is watched again",
                )
            )
    return marks


def _why(pattern: KeyPattern) -> str:
    """The suspension's reason: the key's last hour, when Prometheus had its figures."""
    if not (pattern.networks or pattern.agents):
        return f"its pattern of use changed abruptly ({KEY_ALERT})"
    return (
        f"used from {pattern.networks} networks ({pattern.new_networks} new to it) and "
        f"{pattern.agents} user agents in an hour"
    )


def _valid(documents: Iterable[Mapping[str, Any]]) -> list[ApiTier]:
    tiers = []
    for document in documents:
        try:
            tiers.append(parse(ApiTier, document))
        except InvalidResource:
            continue
    return tiers


def suspended_alerts(gateway: Gateway | None, now: datetime, lasting: timedelta) -> list[dict[str, Any]]:
    """TollwayKeySuspended for each suspended key, as Alertmanager's API takes alerts: sent again on every
    gateway reconcile while the key stays suspended (each lasting `lasting`, longer than a resync), so it
    resolves, and its consumer hears so, soon after the suspension is lifted."""
    if gateway is None:
        return []
    ends = now + lasting
    return [
        {
            "labels": {
                "alertname": KEY_SUSPENDED_ALERT,
                "namespace": gateway.namespace,
                "tier": credential.tier,
                "consumer": counter_name(credential.consumer),
                "secret": credential.id,
                "severity": "page",
            },
            "annotations": {
                "summary": f"an API key of consumer {credential.consumer} (tier {credential.tier}) is "
                f"suspended: {credential.suspended}",
            },
            "startsAt": _rfc3339(now),
            "endsAt": _rfc3339(ends),
        }
        for credential in gateway.credentials
        if credential.suspended is not None
    ]


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
