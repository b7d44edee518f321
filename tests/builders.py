"""Valid resources to start a test from; pass keyword changes as dotted paths ("spec.triton.gpus": 0)."""

from __future__ import annotations

import copy
from typing import Any

from tollway.ir.state import DeploymentState

_MODEL_DEPLOYMENT: dict[str, Any] = {
    "apiVersion": "tollway.dev/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"name": "chat", "namespace": "ai", "generation": 1},
    "spec": {
        "model": {"repository": "s3://models/chat", "backend": "python", "maxBatchSize": 8},
        "versions": [{"version": "2"}, {"version": "1"}],
        "aliases": {"latest": "2"},
    },
}

_API_TIER: dict[str, Any] = {
    "apiVersion": "tollway.dev/v1alpha1",
    "kind": "ApiTier",
    "metadata": {"name": "pro", "namespace": "ai", "generation": 1},
    "spec": {
        "priority": 2,
        "limits": {"requestsPerMinute": 60},
        "models": ["chat"],
        "auth": {"apiKeys": {"secretSelector": {"matchLabels": {"tollway.dev/tier": "pro"}}}},
    },
}


def _with(base: dict[str, Any], name: str | None, changes: dict[str, Any]) -> dict[str, Any]:
    document = copy.deepcopy(base)
    if name is not None:
        document["metadata"]["name"] = name
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        node = document
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return document


def model_deployment(name: str | None = None, **changes: Any) -> dict[str, Any]:
    return _with(_MODEL_DEPLOYMENT, name, changes)


def api_tier(name: str | None = None, **changes: Any) -> dict[str, Any]:
    return _with(_API_TIER, name, changes)


def available_deployment(**changes: Any) -> DeploymentState:
    """A Deployment state with every replica (2) updated and available; `changes` replace fields."""
    fields = {"generation": 1, "observed_generation": 1, "replicas": 2, "ready_replicas": 2}
    return DeploymentState(**{**fields, "available_replicas": 2, "updated_replicas": 2, **changes})
