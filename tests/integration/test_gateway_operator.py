"""`tollway run` and the gateway on the real control plane: one gateway per namespace from its tiers,
models and key Secrets; tier status; a new key reaches Envoy's config; the gateway goes with its tiers."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import yaml

from builders import api_tier, model_deployment
from testbed.kube import Cluster, Operator, eventually

NAMESPACE = f"gateway-test-{os.getpid()}"


def key_secret(name: str, tier: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"tollway.dev/tier": tier}},
        "stringData": {"api-key": f"tw-{name}-secret-value"},
    }


def condition(cluster: Cluster, tier: str, kind: str) -> dict[str, Any] | None:
    found = cluster.get("tier", tier, NAMESPACE).get("status") or {}
    return next((item for item in found.get("conditions", []) if item["type"] == kind), None)


def envoy_files(cluster: Cluster) -> dict[str, str]:
    secret = cluster.get("secret", "tollway-gateway-envoy", NAMESPACE)
    return {name: base64.b64decode(value).decode() for name, value in secret["data"].items()}


def test_the_gateway_is_rendered_owned_by_every_tier_and_reports_to_each(
    cluster: Cluster, running_operator: Operator
) -> None:
    at = {"metadata.namespace": NAMESPACE}
    cluster.apply(model_deployment("chat", **at))
    cluster.apply(api_tier("pro", **at, **{"spec.models": ["chat", "chat:stable"]}))
    cluster.apply(
        api_tier(
            "free",
            **at,
            **{
                "spec.priority": 3,
                "spec.models": ["chat"],
                "spec.auth.apiKeys.secretSelector.matchLabels": {"tollway.dev/tier": "free"},
            },
        )
    )
    cluster.apply(key_secret("alice", "free"))
    cluster.apply(key_secret("bob", "pro"))
    expected = {
        ("secret", "tollway-gateway-envoy"),
        ("secret", "tollway-gateway-redis"),  # Redis's generated password
        ("networkpolicy", "tollway-gateway-ratelimit"),
        ("networkpolicy", "tollway-gateway-redis"),
        ("configmap", "tollway-gateway-ratelimit"),
        ("configmap", "tollway-gateway-capacity"),  # what consumers read of each model's room
        *(
            ("deployment", name)
            for name in ("tollway-gateway", "tollway-gateway-ratelimit", "tollway-gateway-redis")
        ),
        *(
            ("service", name)
            for name in ("tollway-gateway", "tollway-gateway-ratelimit", "tollway-gateway-redis")
        ),
        ("poddisruptionbudget", "tollway-gateway"),
        ("poddisruptionbudget", "tollway-gateway-ratelimit"),
    }
    children = eventually(lambda: _children(cluster) if _children(cluster) >= expected else None)
    assert children == expected

    def owners() -> list[str] | None:  # the first render may come before the second tier exists
        found = cluster.get("deployment", "tollway-gateway", NAMESPACE)["metadata"]["ownerReferences"]
        names = sorted(owner["name"] for owner in found)
        return names if names == ["free", "pro"] else None

    eventually(owners)

    def having(tier: str, kind: str, reason: str) -> dict[str, Any] | None:
        found = condition(cluster, tier, kind)
        return found if found and found["reason"] == reason else None

    degraded = eventually(lambda: having("pro", "Degraded", "UnknownModel"))
    assert degraded["status"] == "True" and 'model "chat" has no alias "stable"' in degraded["message"]
    # The gateway's Envoy pods are scheduled onto the simulated nodes and reported running (by kwok: no Envoy
    # process runs there), so the rules count as served.
    ready = eventually(lambda: having("free", "Ready", "Applied"), timeout=120)
    assert ready["status"] == "True"
    assert eventually(lambda: cluster.get("tier", "free", NAMESPACE).get("status", {}).get("consumers")) == 1
    files = eventually(
        lambda: envoy_files(cluster) if "tw-alice-secret-value" in envoy_files(cluster)["lds.yaml"] else None
    )
    listeners = yaml.safe_load(files["lds.yaml"])
    assert listeners["resources"][0]["name"] == "http"
    assert "tw-alice-secret-value" in files["lds.yaml"]
    limits = cluster.get("configmap", "tollway-gateway-ratelimit", NAMESPACE)["data"]["tollway.yaml"]
    descriptors = yaml.safe_load(limits)["descriptors"]
    # the limits (the tiers' and the per-address one of callers without a valid credential) and each tier's
    # key-compromise signals (shadow limits, never refused): usage is counted by Envoy, not by the service
    signals = {
        (signal, tier)
        for signal in ("networks", "new_networks", "agents", "new_keys")
        for tier in ("free", "pro")
    }
    assert {(entry["key"], entry["value"]) for entry in descriptors} == {
        ("rpm", "free"),
        ("rpm", "pro"),
        ("ip", "_unauthenticated"),
        *signals,
    }
    shadowed = [entry for entry in descriptors if (entry["key"], entry["value"]) in signals]
    assert all(entry["descriptors"][0]["descriptors"][0]["shadow_mode"] for entry in shadowed)


def _children(cluster: Cluster) -> set[tuple[str, str]]:
    listing = cluster.kubectl(
        "get",
        "secret,configmap,deployment,service,poddisruptionbudget,networkpolicy",
        "-n",
        NAMESPACE,
        "-l",
        "tollway.dev/gateway=tollway-gateway",
        "-o",
        "json",
    )
    return {(item["kind"].lower(), item["metadata"]["name"]) for item in json.loads(listing.stdout)["items"]}


def test_a_new_key_reaches_envoy_and_a_removed_one_leaves(
    cluster: Cluster, running_operator: Operator
) -> None:
    cluster.apply(key_secret("carol", "free"))
    eventually(lambda: "tw-carol-secret-value" in envoy_files(cluster)["lds.yaml"] or None)
    assert eventually(lambda: cluster.get("tier", "free", NAMESPACE)["status"]["consumers"] == 2 or None)
    cluster.kubectl("delete", "secret", "carol", "-n", NAMESPACE)
    eventually(lambda: "tw-carol-secret-value" not in envoy_files(cluster)["lds.yaml"] or None)


def test_a_model_edit_changes_the_routes(cluster: Cluster, running_operator: Operator) -> None:
    cluster.patch("md", "chat", NAMESPACE, {"spec": {"aliases": {"latest": "2", "stable": "1"}}})
    eventually(lambda: "/v1/models/chat:stable/infer" in envoy_files(cluster)["lds.yaml"] or None)
    assert eventually(lambda: (condition(cluster, "pro", "Degraded") or {}).get("status") == "False" or None)


def test_a_deleted_gateway_child_is_restored(cluster: Cluster, running_operator: Operator) -> None:
    cluster.kubectl("delete", "configmap", "tollway-gateway-ratelimit", "-n", NAMESPACE)
    eventually(lambda: ("configmap", "tollway-gateway-ratelimit") in _children(cluster) or None)


def test_the_gateway_goes_when_its_last_tier_goes(cluster: Cluster, running_operator: Operator) -> None:
    cluster.kubectl("delete", "tier", "pro", "free", "-n", NAMESPACE)
    eventually(lambda: _children(cluster) == set() or None, timeout=90)
