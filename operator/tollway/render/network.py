"""NetworkPolicies: nothing inside the cluster walks around the gateway.

Triton takes requests from its namespace's gateway (Envoy), from the operator (its state, and each pod's
queue on the metrics port for the burst floor) and from Prometheus (metrics); the ratelimit service from
Envoy (gRPC) and Prometheus (metrics); Redis from the ratelimit service only; a model's shared answer cache
from that model's pods only. Envoy has no policy: it is the public entry. Egress is left open. Policies need
a CNI that enforces them; the kubelet's probes come from the node, which CNIs admit.
"""

from __future__ import annotations

from typing import Any

from tollway.ir.names import (
    GATEWAY_NAME,
    RATELIMIT_GRPC_PORT,
    RATELIMIT_METRICS_PORT,
    REDIS_PORT,
    TRITON_HTTP_PORT,
    TRITON_METRICS_PORT,
    cache_pod_labels,
    gateway_pod_labels,
    serving_pod_labels,
)
from tollway.ir.network import NetworkPeers, Peer

API_VERSION = "networking.k8s.io/v1"
Source = dict[str, Any]


def peer(found: Peer) -> Source:
    """Pods of another namespace (or of any: the empty selector, in the form the API server keeps it)."""
    namespaces = {"matchLabels": {"kubernetes.io/metadata.name": found.namespace}} if found.namespace else {}
    return {"namespaceSelector": namespaces, "podSelector": {"matchLabels": dict(found.pod_labels)}}


def local(labels: dict[str, str]) -> Source:
    """Pods of the policy's own namespace."""
    return {"podSelector": {"matchLabels": labels}}


def _rule(sources: list[Source], ports: list[int]) -> dict[str, Any]:
    return {"from": sources, "ports": [{"protocol": "TCP", "port": port} for port in ports]}


def _policy(metadata: dict[str, Any], pods: dict[str, str], rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "NetworkPolicy",
        "metadata": metadata,
        "spec": {"podSelector": {"matchLabels": pods}, "policyTypes": ["Ingress"], "ingress": rules},
    }


def serving_policy(
    metadata: dict[str, Any], model_deployment: str, peers: NetworkPeers, inference_ports: list[int]
) -> dict[str, Any]:
    """Triton's: inference (`inference_ports`: Triton's, and the OpenAI server's beside a language model)
    from the namespace's gateway, HTTP and metrics to the operator, metrics to Prometheus."""
    envoy = local(gateway_pod_labels(GATEWAY_NAME, "envoy"))
    return _policy(
        metadata,
        serving_pod_labels(model_deployment),
        [
            _rule([envoy], inference_ports),
            _rule([peer(peers.operator)], [TRITON_HTTP_PORT, TRITON_METRICS_PORT]),
            _rule([peer(peers.prometheus)], [TRITON_METRICS_PORT]),
        ],
    )


def ratelimit_policy(metadata: dict[str, Any], gateway: str, peers: NetworkPeers) -> dict[str, Any]:
    """The ratelimit service's: gRPC from the gateway's Envoy, metrics to Prometheus; its HTTP port (the
    /json endpoint spends counters) to nobody."""
    return _policy(
        metadata,
        gateway_pod_labels(gateway, "ratelimit"),
        [
            _rule([local(gateway_pod_labels(gateway, "envoy"))], [RATELIMIT_GRPC_PORT]),
            _rule([peer(peers.prometheus)], [RATELIMIT_METRICS_PORT]),
        ],
    )


def redis_policy(metadata: dict[str, Any], gateway: str) -> dict[str, Any]:
    """Redis's: the ratelimit service only."""
    return _policy(
        metadata,
        gateway_pod_labels(gateway, "redis"),
        [_rule([local(gateway_pod_labels(gateway, "ratelimit"))], [REDIS_PORT])],
    )


def cache_policy(metadata: dict[str, Any], model_deployment: str) -> dict[str, Any]:
    """A model's shared answer cache's: that model's pods (their OpenAI servers) only."""
    return _policy(
        metadata,
        cache_pod_labels(model_deployment),
        [_rule([local(serving_pod_labels(model_deployment))], [REDIS_PORT])],
    )
