"""A chat or completion model's answer cache (spec.cache): the OpenAI server's flags, and for `store:
shared` the Redis every replica's server shares.

The shared cache is a child of the model, not the gateway's Redis: its bound and eviction (maxmemory,
allkeys-lru) must not evict the gateway's rate-limit counters, and one Redis per model keeps one model's
(or namespace's) answers out of reach of every other model's pods. It keeps nothing on disk: a restart
empties it, which costs misses only.
"""

from __future__ import annotations

from typing import Any

from tollway.ir.names import (
    CACHE_PASSWORD,
    CACHE_PASSWORD_VARIABLE,
    MODEL_LABEL,
    REDIS_PORT,
    cache_pod_labels,
    in_cluster_host,
    serving_children,
)
from tollway.ir.serving import AnswerCache, TritonServing
from tollway.render.credentials import from_secret, redis_args
from tollway.render.meta import MANAGED_BY, RESTRICTED_CONTAINER, pod_security
from tollway.render.network import cache_policy

#: The Redis process's own memory beyond the answers it holds (maxmemory counts the data only).
REDIS_OVERHEAD_BYTES = 64 * 1024 * 1024


def labels(serving: TritonServing) -> dict[str, str]:
    """The shared cache's, on its children and its pod."""
    return {**cache_pod_labels(serving.name), MODEL_LABEL: serving.name, **MANAGED_BY}


def server_args(serving: TritonServing, cache: AnswerCache, revision: str) -> list[str]:
    """The OpenAI server's cache flags. `revision` (a digest of the model's config, versions and chat
    template) is part of every key: answers cached before a config change are never served after it."""
    if cache.shared:
        address = in_cluster_host(serving_children(serving.name)["cache"], serving.namespace)
        store = [f"--cache-store=redis://{address}:{REDIS_PORT}"]
    else:
        store = ["--cache-store=pod", f"--cache-bytes={cache.size_bytes}"]
    sampled = ["--cache-sampled"] if cache.sampled else []
    return [*store, f"--cache-ttl-seconds={cache.ttl_seconds}", f"--cache-revision={revision}", *sampled]


def password_env(serving: TritonServing) -> list[dict[str, Any]]:
    """The shared cache's password, as its Redis and the model's OpenAI servers read it."""
    return [from_secret(CACHE_PASSWORD_VARIABLE, serving_children(serving.name)["triton"], CACHE_PASSWORD)]


def shared_cache(
    serving: TritonServing, cache: AnswerCache, metadata: dict[str, Any]
) -> list[dict[str, Any]]:
    """The shared cache's Deployment, Service and NetworkPolicy (the model's pods only), named by
    `metadata` (the model's "cache" child)."""
    pods = cache_pod_labels(serving.name)
    container = {
        "name": "redis",
        "image": cache.redis_image,
        "args": redis_args(
            CACHE_PASSWORD_VARIABLE,
            *("--appendonly", "no"),
            *("--maxmemory", str(cache.size_bytes), "--maxmemory-policy", "allkeys-lru"),
        ),
        "env": password_env(serving),
        "ports": [{"name": "redis", "containerPort": REDIS_PORT, "protocol": "TCP"}],
        "readinessProbe": {"tcpSocket": {"port": "redis"}, "periodSeconds": 5},
        "resources": {
            "requests": {"cpu": "50m", "memory": str(cache.size_bytes + REDIS_OVERHEAD_BYTES)},
            "limits": {"memory": str(cache.size_bytes * 5 // 4 + REDIS_OVERHEAD_BYTES)},
        },
        "securityContext": RESTRICTED_CONTAINER,
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": pods},
            "strategy": {"type": "Recreate"},
            "template": {
                "metadata": {"labels": labels(serving)},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": pod_security(999),  # the redis image's user
                    "containers": [container],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "selector": pods,
            "ports": [{"name": "redis", "port": REDIS_PORT, "targetPort": "redis", "protocol": "TCP"}],
        },
    }
    return [deployment, service, cache_policy(metadata, serving.name)]
