"""The names and ports Tollway gives what it makes, in one place: translate/ and several renderers must
agree on them (the gateway's upstream is a ModelDeployment's Service; Envoy's descriptors are the ratelimit
service's configuration keys), and none of those modules should import another to learn them."""

from __future__ import annotations

GATEWAY_NAME = "tollway-gateway"
"""The one gateway of each namespace that has an ApiTier."""

TRITON_HTTP_PORT, TRITON_GRPC_PORT, TRITON_METRICS_PORT = 8000, 8001, 8002
RATELIMIT_GRPC_PORT, RATELIMIT_HTTP_PORT, RATELIMIT_METRICS_PORT = 8081, 8080, 9090
REDIS_PORT = 6379

RATELIMIT_DOMAIN = "tollway"
"""The ratelimit service's domain: Envoy's ratelimit filters and the service's configuration name it."""
USAGE_KINDS = ("usage_requests", "usage_input", "usage_output", "usage_unreported")
"""Counters the ratelimit service keeps per tier and consumer at the end of each request: the descriptor
keys Envoy's usage filter sends and the service's configuration declares (usage_unreported: served
responses that reported no token counts, charged their estimate instead)."""


def serving_children(model_deployment: str) -> dict[str, str]:
    """A ModelDeployment's children, by part (DNS label of ≤ 40 characters: room for suffixes)."""
    return {
        "triton": f"{model_deployment}-triton",
        "config": f"{model_deployment}-model-config",
        "dashboard": f"{model_deployment}-dashboard",
    }


def gateway_children(gateway: str) -> dict[str, str]:
    """A gateway's children, by part."""
    return {
        "envoy": gateway,
        "config": f"{gateway}-envoy",
        "ratelimit": f"{gateway}-ratelimit",
        "redis": f"{gateway}-redis",
    }


def in_cluster_host(service: str, namespace: str) -> str:
    return f"{service}.{namespace}.svc.cluster.local"
