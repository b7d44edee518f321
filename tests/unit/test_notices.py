"""The consumers' notice routes (render/notices.py): which consumer's alerts go to which webhook, as a plain
Alertmanager subtree (checked by Debian's amtool) and as prometheus-operator's AlertmanagerConfig."""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from tollway import documents
from tollway.ir.gateway import Gateway
from tollway.render.gateway import NOTICES_FILE, gateway_files
from tollway.render.notices import alertmanager_config, notice_routes
from tollway.translate import translate_all

CASE = Path(__file__).resolve().parents[1] / "golden" / "tier-network-defences" / "in.yaml"
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
ALERTS = "TollwayConsumerUsageSpike|TollwayConsumerNearLimit|TollwayKeyPatternChanged|TollwayKeySuspended"


def case_gateway(**annotations: str) -> Gateway:
    """The golden case's gateway: acme.eu's current key names a webhook, its old one an ftp:// URL."""
    loaded = documents.load([CASE])
    for document in loaded:
        if document["kind"] == "Secret" and document["metadata"]["name"] == "newco-key":
            document["metadata"]["annotations"] = annotations
    gateway = translate_all(loaded, NOW).gateways["ai"].plan.gateway
    assert gateway is not None
    return gateway


def test_each_consumer_with_a_webhook_gets_a_route_to_it_for_its_own_alerts_only() -> None:
    routes = notice_routes(case_gateway())
    assert routes is not None
    route = routes["route"]
    assert route["matchers"] == ['namespace="ai"', f'alertname=~"{ALERTS}"']
    assert route["continue"] is True  # the platform's own routes still see every alert
    assert route["group_by"] == ["alertname", "tier", "consumer"]
    assert route["routes"] == [
        {
            "receiver": "tollway:ai:enterprise:acme%2Eeu",
            "matchers": ['tier="enterprise"', 'consumer="acme%2Eeu"'],
        }
    ]
    assert routes["receivers"] == [
        {"name": "tollway-no-notice"},
        {
            "name": "tollway:ai:enterprise:acme%2Eeu",
            "webhook_configs": [
                {
                    "url": "https://hooks.acme.example/tollway?token=t1",
                    "send_resolved": True,
                    "max_alerts": 10,
                }
            ],
        },
    ]


def test_two_keys_of_one_consumer_share_its_route_and_a_gateway_without_webhooks_has_none() -> None:
    both = case_gateway(**{"tollway.dev/notify-webhook": "http://10.0.0.9:8080/newco"})
    routes = notice_routes(both)
    assert routes is not None and len(routes["route"]["routes"]) == 2
    plain = Gateway(namespace="ai", name="tollway-gateway", owners=(), models=(), tiers=(), credentials=())
    assert notice_routes(plain) is None and alertmanager_config(plain, {}) is None
    assert NOTICES_FILE not in gateway_files(plain, NOW)


def test_alertmanager_accepts_the_routes_under_a_platform_root(tmp_path: Path) -> None:
    routes = yaml.safe_load(gateway_files(case_gateway(), NOW)[NOTICES_FILE])
    config = {
        "route": {"receiver": "platform", "routes": [routes["route"], {"receiver": "platform"}]},
        "receivers": [{"name": "platform"}, *routes["receivers"]],
    }
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(config))
    amtool = shutil.which("amtool")
    assert amtool, "amtool is missing: hack/setup installs Debian's prometheus-alertmanager"
    checked = subprocess.run(
        [amtool, "check-config", str(tmp_path / "alertmanager.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    routed = subprocess.run(
        [
            amtool,
            "config",
            "routes",
            "test",
            f"--config.file={tmp_path / 'alertmanager.yml'}",
            "namespace=ai",
            "alertname=TollwayKeySuspended",
            "tier=enterprise",
            "consumer=acme%2Eeu",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert routed.stdout.split() == ["tollway:ai:enterprise:acme%2Eeu,platform"], routed.stderr


def test_the_alertmanager_config_resource_says_the_same() -> None:
    metadata: dict[str, Any] = {"name": "tollway-gateway-notices", "namespace": "ai"}
    config = alertmanager_config(case_gateway(), metadata)
    assert config is not None and config["kind"] == "AlertmanagerConfig"
    spec = config["spec"]
    assert spec["route"]["matchers"] == [{"name": "alertname", "value": ALERTS, "matchType": "=~"}]
    assert spec["route"]["routes"][0]["matchers"] == [
        {"name": "tier", "value": "enterprise", "matchType": "="},
        {"name": "consumer", "value": "acme%2Eeu", "matchType": "="},
    ]
    assert spec["receivers"][1]["webhookConfigs"] == [
        {"url": "https://hooks.acme.example/tollway?token=t1", "sendResolved": True, "maxAlerts": 10}
    ]


def test_a_webhook_that_is_no_http_url_is_named_and_sends_nothing() -> None:
    for url in (
        "ftp://hooks.example",
        "https://",
        "http://[::1",
        "https://hooks.example/a b",
        "hooks.example",
    ):
        loaded = documents.load([CASE])
        for document in loaded:
            if document["kind"] == "Secret" and document["metadata"]["name"] == "newco-key":
                document["metadata"]["annotations"] = {"tollway.dev/notify-webhook": url}
        result = translate_all(loaded, NOW).gateways["ai"]
        problems = result.plan.reports["enterprise"].problems
        assert any(
            'Secret "newco-key": annotation tollway.dev/notify-webhook' in problem for problem in problems
        )
        assert result.plan.gateway is not None
        assert all(
            credential.notify_webhook is None
            for credential in result.plan.gateway.credentials
            if credential.id == "newco-key"
        )
