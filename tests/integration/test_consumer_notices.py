"""A consumer's notices reach that consumer: `tollway gateway-config` renders the notice routes of the
consumers whose key Secrets name a webhook, a real Alertmanager (Debian's) runs them under a platform's root
route, and a local webhook receiver stands in for each consumer and for the platform team.

The alerts are posted to Alertmanager's API as Prometheus posts them (and as the operator posts
TollwayKeySuspended): the rules that raise them are tested by promtool (test_rules.py) and need hours of
series to fire, which a test cannot wait for."""

from __future__ import annotations

import http.server
import json
import threading
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest
import yaml

from testbed.dataplane import alertmanager, gateway_config
from testbed.gateway import secret, serving_thread, tier, tiny_model
from testbed.kube import eventually
from testbed.processes import free_port


class Receiver(http.server.BaseHTTPRequestHandler):
    """Every webhook call, by path: /acme, /newco (consumers) and /platform."""

    received: ClassVar[dict[str, list[dict[str, Any]]]] = {}
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
        with self.lock:
            self.received.setdefault(self.path, []).append(body)
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


def alerts_at(path: str) -> set[tuple[str, str]]:
    """(alertname, consumer) of each alert the receiver at `path` was told of, firing."""
    with Receiver.lock:
        calls = list(Receiver.received.get(path, []))
    return {
        (alert["labels"]["alertname"], alert["labels"].get("consumer", ""))
        for call in calls
        for alert in call["alerts"]
        if alert["status"] == "firing"
    }


@pytest.fixture(scope="module")
def notices(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Alertmanager's URL, running the routes rendered for tier pro of namespace gw (acme's key names a
    webhook, bob's none) under a root route of the platform's own."""
    workdir = tmp_path_factory.mktemp("notices")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    with serving_thread(server) as port:
        hooks = f"http://127.0.0.1:{port}"
        webhook = {"tollway.dev/notify-webhook": f"{hooks}/acme"}
        manifests = [
            tiny_model(),
            tier("pro", 2, {"requestsPerMinute": 60}, ["tiny"]),
            secret("acme-key", "pro", "k-acme-0123456789", annotations=webhook),
            secret("bob-key", "pro", "k-bob-0123456789"),
        ]
        source = workdir / "gateway.yaml"
        source.write_text(yaml.safe_dump_all(manifests))
        gateway_config([source], workdir / "gateway", "--upstream=tiny=127.0.0.1:1")
        routes = yaml.safe_load((workdir / "gateway" / "alertmanager" / "notices.yaml").read_text())
        # The consumers' routes wait 30 s to group a new alert, as rendered; the platform's route 1 s.
        platform = {"name": "platform", "webhook_configs": [{"url": f"{hooks}/platform"}]}
        config = {
            "route": {
                "receiver": "platform",
                "group_wait": "1s",
                "routes": [routes["route"], {"receiver": "platform", "group_wait": "1s"}],
            },
            "receivers": [platform, *routes["receivers"]],
        }
        (workdir / "alertmanager.yml").write_text(yaml.safe_dump(config))
        listen = free_port()
        process = alertmanager(workdir, workdir / "alertmanager.yml", listen)
        try:
            yield f"http://127.0.0.1:{listen}"
        finally:
            process.stop()


def post(url: str, *alerts: dict[str, str]) -> None:
    """Alerts as Prometheus (or the operator) posts them: labels, an annotation, firing for an hour."""
    now = datetime.now(UTC)
    body = [
        {
            "labels": {"namespace": "gw", "tier": "pro", "severity": "ticket", **labels},
            "annotations": {"summary": f"{labels['alertname']} of {labels['consumer']}"},
            "startsAt": now.isoformat(),
            "endsAt": (now + timedelta(hours=1)).isoformat(),
        }
        for labels in alerts
    ]
    request = urllib.request.Request(
        f"{url}/api/v2/alerts",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200


def test_a_consumers_alerts_reach_its_webhook_and_nobody_elses_and_the_platform_sees_all(
    notices: str,
) -> None:
    post(
        notices,
        {"alertname": "TollwayConsumerUsageSpike", "consumer": "acme-key"},
        {"alertname": "TollwayKeySuspended", "consumer": "acme-key", "secret": "acme-key"},
        {"alertname": "TollwayConsumerNearLimit", "consumer": "bob-key"},
        {"alertname": "TollwayTierSlaBudgetLow", "consumer": "acme-key"},  # the platform's business only
    )
    everything = {
        ("TollwayConsumerUsageSpike", "acme-key"),
        ("TollwayKeySuspended", "acme-key"),
        ("TollwayConsumerNearLimit", "bob-key"),
        ("TollwayTierSlaBudgetLow", "acme-key"),
    }
    eventually(lambda: alerts_at("/platform") == everything, timeout=30)
    acme = {("TollwayConsumerUsageSpike", "acme-key"), ("TollwayKeySuspended", "acme-key")}
    eventually(lambda: alerts_at("/acme") == acme, timeout=60)  # after the consumers' 30 s group wait
    assert set(Receiver.received) == {
        "/platform",
        "/acme",
    }  # bob names no webhook: nothing went anywhere else
    with Receiver.lock:
        summaries = {
            alert["annotations"]["summary"] for call in Receiver.received["/acme"] for alert in call["alerts"]
        }
    assert summaries == {"TollwayConsumerUsageSpike of acme-key", "TollwayKeySuspended of acme-key"}
