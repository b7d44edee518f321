"""The Secrets Tollway generates (Triton's admin key, the gateway's Redis password) and how pods read them.

The value arrives from the caller (the cluster's, or one the reconcile drew when the cluster has none), so
rendering stays pure and a resync renders the same Secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any


def secret(metadata: dict[str, Any], values: Mapping[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "Opaque",
        "data": {key: base64.b64encode(value.encode()).decode() for key, value in values.items()},
    }


def from_secret(variable: str, secret_name: str, key: str) -> dict[str, Any]:
    """An environment variable a container reads from a Secret (never a value in the pod's spec)."""
    return {"name": variable, "valueFrom": {"secretKeyRef": {"name": secret_name, "key": key}}}


def derived(key: str, purpose: str) -> str:
    """A secret for `purpose` drawn from another (HMAC-SHA256): a model's shared cache password from its
    Triton admin key, so that no second value has to be drawn and kept."""
    return hmac.new(key.encode(), purpose.encode(), hashlib.sha256).hexdigest()


def digest(value: str) -> str:
    """A pod-template annotation that changes with a secret value: pods that read it at start restart when
    it is drawn again. A hash of a 256-bit random value gives nothing away."""
    return hashlib.sha256(value.encode()).hexdigest()[:16]


def redis_args(password_variable: str, *settings: str) -> list[str]:
    """A Redis server's arguments: every client must AUTH with the password the kubelet fills in from a Secret
    (`$(VAR)`: the pod's spec never holds it), no RDB snapshots, then `settings`."""
    return ["--requirepass", f"$({password_variable})", "--save", "", *settings]
