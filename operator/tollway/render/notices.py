"""Gateway IR → the Alertmanager routes that take each consumer's notices to that consumer: its usage spikes,
running near its limits, its key's compromise signals and suspension, to the webhook its key's Secret names
(translate.gateway.NOTIFY_ANNOTATION). As a plain Alertmanager route subtree and receivers (`notices.yaml`,
for an Alertmanager configured by hand) and as prometheus-operator's AlertmanagerConfig (in a cluster that
serves it); both say the same."""

from __future__ import annotations

from typing import Any

from tollway.ir.gateway import Gateway
from tollway.ir.names import KEY_ALERT, KEY_SUSPENDED_ALERT, counter_name

ALERTMANAGER_CONFIG_API = "monitoring.coreos.com/v1alpha1"
CONSUMER_ALERTS = (
    "TollwayConsumerUsageSpike",
    "TollwayConsumerNearLimit",
    KEY_ALERT,
    KEY_SUSPENDED_ALERT,
)
"""The alerts about one consumer (each has its `consumer` label, in the counters' form) that it is told of."""
NO_NOTICE = "tollway-no-notice"
"""The subtree's own receiver, with nothing to send to: a consumer without a webhook is told nothing."""
TIMING = (
    ("group_wait", "groupWait", "30s"),
    ("group_interval", "groupInterval", "5m"),
    ("repeat_interval", "repeatInterval", "12h"),
)
"""Alertmanager's and AlertmanagerConfig's names of each: a consumer hears of a new alert within half a
minute, and of one still firing twice a day at most."""
GROUP_BY = ["alertname", "tier", "consumer"]


def consumer_webhooks(gateway: Gateway) -> dict[tuple[str, str], tuple[str, ...]]:
    """(tier, consumer as the counters write it) → the webhooks of its keys (several during a rotation)."""
    found: dict[tuple[str, str], set[str]] = {}
    for credential in gateway.credentials:
        if credential.notify_webhook:
            key = (credential.tier, counter_name(credential.consumer))
            found.setdefault(key, set()).add(credential.notify_webhook)
    return {key: tuple(sorted(urls)) for key, urls in sorted(found.items())}


def _receiver_name(namespace: str, tier: str, consumer: str) -> str:
    """Unique: ':' is in no Kubernetes name and no label value."""
    return f"tollway:{namespace}:{tier}:{consumer}"


def notice_routes(gateway: Gateway) -> dict[str, Any] | None:
    """A route subtree (for the root route's `routes`, with `continue: true` so the platform's own routes
    still see every alert) and its receivers; None when no consumer has a webhook."""
    webhooks = consumer_webhooks(gateway)
    if not webhooks:
        return None
    namespace = gateway.namespace
    route = {
        "receiver": NO_NOTICE,
        "matchers": [f'namespace="{namespace}"', f'alertname=~"{"|".join(CONSUMER_ALERTS)}"'],
        "group_by": GROUP_BY,
        **{name: value for name, _, value in TIMING},
        "continue": True,
        "routes": [
            {
                "receiver": _receiver_name(namespace, tier, consumer),
                "matchers": [f'tier="{tier}"', f'consumer="{consumer}"'],
            }
            for tier, consumer in webhooks
        ],
    }
    receivers: list[dict[str, Any]] = [{"name": NO_NOTICE}]
    receivers += [
        {
            "name": _receiver_name(namespace, tier, consumer),
            "webhook_configs": [{"url": url, "send_resolved": True, "max_alerts": 10} for url in urls],
        }
        for (tier, consumer), urls in webhooks.items()
    ]
    return {"route": route, "receivers": receivers}


def _matcher(name: str, value: str, match_type: str = "=") -> dict[str, str]:
    return {"name": name, "value": value, "matchType": match_type}


def alertmanager_config(gateway: Gateway, metadata: dict[str, Any]) -> dict[str, Any] | None:
    """The same routes as prometheus-operator's AlertmanagerConfig (which adds the namespace's matcher)."""
    webhooks = consumer_webhooks(gateway)
    if not webhooks:
        return None
    route = {
        "receiver": NO_NOTICE,
        "matchers": [_matcher("alertname", "|".join(CONSUMER_ALERTS), "=~")],
        "groupBy": GROUP_BY,
        **{name: value for _, name, value in TIMING},
        "routes": [
            {
                "receiver": _receiver_name(gateway.namespace, tier, consumer),
                "matchers": [_matcher("tier", tier), _matcher("consumer", consumer)],
            }
            for tier, consumer in webhooks
        ],
    }
    receivers: list[dict[str, Any]] = [{"name": NO_NOTICE}]
    receivers += [
        {
            "name": _receiver_name(gateway.namespace, tier, consumer),
            "webhookConfigs": [{"url": url, "sendResolved": True, "maxAlerts": 10} for url in urls],
        }
        for (tier, consumer), urls in webhooks.items()
    ]
    return {
        "apiVersion": ALERTMANAGER_CONFIG_API,
        "kind": "AlertmanagerConfig",
        "metadata": metadata,
        "spec": {"route": route, "receivers": receivers},
    }
