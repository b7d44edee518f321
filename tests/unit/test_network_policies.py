"""What keeps cluster traffic on the gateway's path: the NetworkPolicies select the pods Tollway really
renders and admit only their peers; Redis's password and Triton's admin key are generated once, kept, and
reach containers only through Secrets."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import pytest

from tollway.api import ModelDeployment
from tollway.ir.gateway import Runtime
from tollway.ir.names import REDIS_PASSWORD, TRITON_KEY, TRITON_KEY_HEADER
from tollway.ir.network import NetworkPeers, Peer
from tollway.translate import Context, kept_or_fresh, translate, translate_gateway
from tollway.translate.gateway import GatewayOptions

from builders import api_tier, model_deployment

NOW = datetime(2025, 1, 1, tzinfo=UTC)
DEFAULT_PEERS = NetworkPeers()
Manifest = dict[str, Any]


def _find(manifests: list[Manifest] | tuple[Manifest, ...], kind: str, name: str) -> Manifest:
    return next(found for found in manifests if (found["kind"], found["metadata"]["name"]) == (kind, name))


def _gateway(fresh: str = "drawn", secrets: list[Manifest] | None = None, **runtime: Any) -> list[Manifest]:
    options = GatewayOptions(runtime=Runtime(**runtime))
    documents = [model_deployment("chat"), api_tier("pro")]
    return list(translate_gateway("ai", documents, secrets or [], NOW, options, fresh=fresh).manifests)


def _serving(key: str = "drawn", peers: NetworkPeers = DEFAULT_PEERS) -> list[Manifest]:
    context = Context(network=peers, admin_key=key)
    return list(translate(ModelDeployment, model_deployment("chat"), NOW, context).manifests)


def _pod_labels(deployment: Manifest) -> dict[str, str]:
    return dict(deployment["spec"]["template"]["metadata"]["labels"])


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return set(selector["matchLabels"].items()) <= set(labels.items())


def _admitted(policy: Manifest) -> list[tuple[dict[str, Any], list[int]]]:
    """(source, ports) for each source of each ingress rule."""
    return [
        (source, [port["port"] for port in rule["ports"]])
        for rule in policy["spec"]["ingress"]
        for source in rule["from"]
    ]


def test_each_policy_selects_the_pods_it_guards_and_admits_the_pods_of_its_peers() -> None:
    gateway, serving = _gateway(), _serving()
    pods = {
        name: _pod_labels(_find([*gateway, *serving], "Deployment", name))
        for name in ("chat-triton", "tollway-gateway", "tollway-gateway-ratelimit", "tollway-gateway-redis")
    }
    expected = {  # guarded pods: {their namespace-local peers' pods: ports}
        "chat-triton": {"tollway-gateway": [8000, 8001]},
        "tollway-gateway-ratelimit": {"tollway-gateway": [8081]},
        "tollway-gateway-redis": {"tollway-gateway-ratelimit": [6379]},
    }
    for guarded, peers in expected.items():
        policy = _find([*gateway, *serving], "NetworkPolicy", guarded)
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        assert _selects(policy["spec"]["podSelector"], pods[guarded])
        local = [(source, ports) for source, ports in _admitted(policy) if "namespaceSelector" not in source]
        admitted = {
            name: ports
            for name, labels in pods.items()
            for source, ports in local
            if _selects(source["podSelector"], labels)
        }
        assert admitted == peers
    assert not any(
        found["kind"] == "NetworkPolicy" and found["metadata"]["name"] == "tollway-gateway"
        for found in gateway
    )


def test_the_operator_and_prometheus_are_admitted_to_the_ports_they_use_only() -> None:
    peers = NetworkPeers(
        operator=Peer("ops", (("app.kubernetes.io/name", "tollway"),)),
        prometheus=Peer(None, (("prometheus", "k8s"),)),
    )
    triton = _find(_serving(peers=peers), "NetworkPolicy", "chat-triton")
    others = [(source, ports) for source, ports in _admitted(triton) if "namespaceSelector" in source]
    assert others == [
        (
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ops"}},
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "tollway"}},
            },
            [8000, 8002],  # the model's state, and each pod's queue (the burst floor)
        ),
        ({"namespaceSelector": {}, "podSelector": {"matchLabels": {"prometheus": "k8s"}}}, [8002]),
    ]
    options = GatewayOptions(runtime=Runtime())
    gateway = translate_gateway("ai", [api_tier("pro")], [], NOW, options, network=peers, fresh="x").manifests
    ratelimit = _find(gateway, "NetworkPolicy", "tollway-gateway-ratelimit")
    assert [ports for source, ports in _admitted(ratelimit) if "namespaceSelector" in source] == [[9090]]


@pytest.mark.parametrize(
    ("text", "peer"),
    [
        (
            "tollway-system/app.kubernetes.io/name=tollway",
            Peer("tollway-system", (("app.kubernetes.io/name", "tollway"),)),
        ),
        ("*/a=b,c=d", Peer(None, (("a", "b"), ("c", "d")))),
        ("/a=b", Peer(None, (("a", "b"),))),
        ("monitoring/", Peer("monitoring", ())),
    ],
)
def test_a_peer_flag_reads_a_namespace_and_labels(text: str, peer: Peer) -> None:
    assert Peer.parse(text) == peer


@pytest.mark.parametrize("text", ["app=x", "ns/app", "ns/=x"])
def test_a_malformed_peer_flag_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"expected|KEY=VALUE"):
        Peer.parse(text)


def _secret_value(secret: Manifest, key: str) -> str:
    return base64.b64decode(secret["data"][key]).decode()


def test_redis_asks_for_a_password_the_ratelimit_service_reads_from_the_same_secret() -> None:
    manifests = _gateway(fresh="first-draw")
    secret = _find(manifests, "Secret", "tollway-gateway-redis")
    assert _secret_value(secret, REDIS_PASSWORD) == "first-draw"
    redis = _find(manifests, "Deployment", "tollway-gateway-redis")["spec"]["template"]["spec"]["containers"][
        0
    ]
    assert redis["args"][:2] == ["--requirepass", "$(REDIS_PASSWORD)"]
    reference = {"secretKeyRef": {"name": "tollway-gateway-redis", "key": REDIS_PASSWORD}}
    assert {"name": "REDIS_PASSWORD", "valueFrom": reference} in redis["env"]
    ratelimit = _find(manifests, "Deployment", "tollway-gateway-ratelimit")["spec"]["template"]["spec"]
    assert {"name": "REDIS_AUTH", "valueFrom": reference} in ratelimit["containers"][0]["env"]
    assert "first-draw" not in str([found for found in manifests if found["kind"] != "Secret"])


def test_the_password_the_cluster_holds_is_kept_whatever_is_drawn() -> None:
    first = _gateway(fresh="first-draw")
    held = [_find(first, "Secret", "tollway-gateway-redis")]
    assert _gateway(fresh="second-draw", secrets=held) == first
    assert _gateway(fresh="second-draw") != first  # deleted: drawn again, and the pods' checksum follows
    annotations = [
        _find(manifests, "Deployment", name)["spec"]["template"]["metadata"]["annotations"]
        for manifests in (first, _gateway(fresh="second-draw"))
        for name in ("tollway-gateway-redis", "tollway-gateway-ratelimit")
    ]
    assert annotations[0] == annotations[1] != annotations[2] == annotations[3]


def test_an_external_redis_gets_no_password_and_no_policy_from_tollway() -> None:
    manifests = _gateway(redis_address="redis.shared:6379")
    assert not [found for found in manifests if found["metadata"]["name"] == "tollway-gateway-redis"]
    ratelimit = _find(manifests, "Deployment", "tollway-gateway-ratelimit")["spec"]["template"]["spec"]
    assert "REDIS_AUTH" not in {variable["name"] for variable in ratelimit["containers"][0]["env"]}


def test_tritons_restricted_apis_take_the_key_from_its_secret() -> None:
    manifests = _serving(key="the-admin-key")
    secret = _find(manifests, "Secret", "chat-triton")
    assert _secret_value(secret, TRITON_KEY) == "the-admin-key"
    triton = _find(manifests, "Deployment", "chat-triton")["spec"]["template"]["spec"]["containers"][0]
    restricted = f"model-repository,logging,trace,shared-memory:{TRITON_KEY_HEADER}=$(TOLLWAY_ADMIN_KEY)"
    assert f"--http-restricted-api={restricted}" in triton["args"]
    assert f"--grpc-restricted-protocol={restricted}" in triton["args"]
    reference = {"secretKeyRef": {"name": "chat-triton", "key": TRITON_KEY}}
    assert triton["env"] == [{"name": "TOLLWAY_ADMIN_KEY", "valueFrom": reference}]
    assert "the-admin-key" not in str([found for found in manifests if found["kind"] != "Secret"])


def test_a_generated_value_is_the_clusters_when_it_has_one() -> None:
    held = {"metadata": {"name": "s"}, "data": {"k": base64.b64encode(b"kept").decode()}}
    assert kept_or_fresh([held], "s", "k", "fresh") == "kept"
    assert kept_or_fresh([held], "other", "k", "fresh") == "fresh"
    assert kept_or_fresh([{**held, "data": {}}], "s", "k", "fresh") == "fresh"  # emptied: drawn again
    assert kept_or_fresh([{**held, "data": {"k": "%%"}}], "s", "k", "fresh") == "fresh"


def test_a_models_pods_restart_when_its_key_changes() -> None:
    def annotations(key: str) -> dict[str, str]:
        deployment = _find(_serving(key=key), "Deployment", "chat-triton")
        return dict(deployment["spec"]["template"]["metadata"]["annotations"])

    assert annotations("a") != annotations("b")
    assert annotations("a") == annotations("a")
