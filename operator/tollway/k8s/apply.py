"""The one apply layer: server-side apply with field manager `tollway`, and no write when nothing changed.

Before applying, each child is read; when the live object already holds every field Tollway sets, nothing is
sent. An edit by hand breaks that containment, so the next reconcile applies again and restores it. When the
comparison cannot tell (the API server normalised a value, say "1000m" → "1"), the apply is sent anyway: a
server-side apply that changes nothing does not write to etcd, so the resourceVersion stays.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from kubernetes import dynamic
from kubernetes.client.exceptions import ApiException

from tollway.k8s.client import api_client

FIELD_MANAGER = "tollway"


@dataclass
class ApplyCounter:
    """Requests that change things, counted for the benchmark and the logs."""

    applied: int = 0
    skipped: int = 0


counter = ApplyCounter()


@cache
def _dynamic() -> dynamic.DynamicClient:
    return dynamic.DynamicClient(api_client())


def contains(live: Any, desired: Any) -> bool:
    """Whether `live` holds every field and value of `desired` (lists item by item, same length)."""
    if isinstance(desired, Mapping):
        return isinstance(live, Mapping) and all(
            key in live and contains(live[key], value) for key, value in desired.items()
        )
    if isinstance(desired, list):
        return isinstance(live, list) and len(live) == len(desired) and all(map(contains, live, desired))
    return bool(live == desired)


def read(manifest: Mapping[str, Any]) -> dict[str, Any] | None:
    resource = _dynamic().resources.get(api_version=manifest["apiVersion"], kind=manifest["kind"])
    meta = manifest["metadata"]
    try:
        found = resource.get(name=meta["name"], namespace=meta.get("namespace"))
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return dict(found.to_dict())


def apply(manifest: Mapping[str, Any]) -> bool:
    """Make the cluster hold `manifest`; True when a request was sent."""
    live = read(manifest)
    if live is not None and contains(live, manifest):
        counter.skipped += 1
        return False
    resource = _dynamic().resources.get(api_version=manifest["apiVersion"], kind=manifest["kind"])
    resource.server_side_apply(
        body=dict(manifest),
        name=manifest["metadata"]["name"],
        namespace=manifest["metadata"].get("namespace"),
        field_manager=FIELD_MANAGER,
        force_conflicts=True,
    )
    counter.applied += 1
    return True


def prune(namespace: str, owner_uid: str, label_selector: str, kinds: Iterable[tuple[str, str]]) -> int:
    """Delete the children of these kinds that `owner_uid` owns; the number deleted."""
    deleted = 0
    for api_version, kind in kinds:
        resource = _dynamic().resources.get(api_version=api_version, kind=kind)
        for item in resource.get(namespace=namespace, label_selector=label_selector).items:
            owners = item.metadata.ownerReferences or []
            if any(owner.uid == owner_uid for owner in owners):
                resource.delete(name=item.metadata.name, namespace=namespace)
                deleted += 1
    return deleted


def apply_all(manifests: Iterable[Mapping[str, Any]]) -> int:
    """Apply every manifest in order; the number of requests sent."""
    return sum(apply(manifest) for manifest in manifests)
