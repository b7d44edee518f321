"""Metadata shared by every child Tollway renders: names, labels, owner references."""

from __future__ import annotations

from typing import Any

from tollway.ir.serving import Owner

MANAGED_BY = {"app.kubernetes.io/managed-by": "tollway"}


def owner_reference(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": owner.api_version,
        "kind": owner.kind,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(name: str, namespace: str, owner: Owner, labels: dict[str, str]) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": {**labels, **MANAGED_BY}}
    if owner.uid:  # `tollway render` works without a cluster, where the owner has no uid yet
        meta["ownerReferences"] = [owner_reference(owner)]
    return meta


RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}
"""The securityContext of the containers that write nothing but their mounted volumes (Envoy, the ratelimit
service, Redis)."""


def pod_security(user: int) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": user,
        "runAsGroup": user,
        "fsGroup": user,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
