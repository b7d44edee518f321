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


def _routes(gateway: Gateway, camel: bool) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """The subtree's route and receivers in Alertmanager's own field names, or (`camel`) in
    AlertmanagerConfig's, whose matchers are objects and which adds the namespace's matcher itself; None
    when no consumer has a webhook."""
    webhooks = consumer_webhooks(gateway)
    if not webhooks:
        return None

    def matchers(*triples: tuple[str, str, str]) -> list[Any]:
        if camel:
            return [{"name": name, "value": value, "matchType": kind} for name, kind, value in triples]
        return [f'{name}{kind}"{value}"' for name, kind, value in triples]

    def receiver(tier: str, consumer: str) -> str:  # unique: ':' is in no Kubernetes name or label value
        return f"tollway:{gateway.namespace}:{tier}:{consumer}"

    alerts = ("alertname", "=~", "|".join(CONSUMER_ALERTS))
    scope = [alerts] if camel else [("namespace", "=", gateway.namespace), alerts]
    route: dict[str, Any] = {
        "receiver": NO_NOTICE,
        "matchers": matchers(*scope),
        ("groupBy" if camel else "group_by"): GROUP_BY,
        **{(camel_name if camel else name): value for name, camel_name, value in TIMING},
        **({} if camel else {"continue": True}),
        "routes": [
            {
                "receiver": receiver(tier, consumer),
                "matchers": matchers(("tier", "=", tier), ("consumer", "=", consumer)),
            }
            for tier, consumer in webhooks
        ],
    }
    hook = ("url", "sendResolved", "maxAlerts") if camel else ("url", "send_resolved", "max_alerts")
    receivers: list[dict[str, Any]] = [{"name": NO_NOTICE}]
    receivers += [
        {
            "name": receiver(tier, consumer),
            ("webhookConfigs" if camel else "webhook_configs"): [
                dict(zip(hook, (url, True, 10), strict=True)) for url in urls
            ],
        }
        for (tier, consumer), urls in webhooks.items()
    ]
    return route, receivers


def notice_routes(gateway: Gateway) -> dict[str, Any] | None:
    """A route subtree (for the root route's `routes`, with `continue: true` so the platform's own routes
    still see every alert) and its receivers; None when no consumer has a webhook."""
    found = _routes(gateway, camel=False)
    return None if found is None else {"route": found[0], "receivers": found[1]}


def alertmanager_config(gateway: Gateway, metadata: dict[str, Any]) -> dict[str, Any] | None:
    """The same routes as prometheus-operator's AlertmanagerConfig."""
    found = _routes(gateway, camel=True)
    if found is None:
        return None
    return {
        "apiVersion": ALERTMANAGER_CONFIG_API,
        "kind": "AlertmanagerConfig",
        "metadata": metadata,
        "spec": {"route": found[0], "receivers": found[1]},
    }
