"""The one apply layer: server-side apply with field manager `tollway`, and no write when nothing changed.

Each child carries an annotation with the hash of what Tollway rendered for it. Before applying, the child
is read: when the hash matches and the live object still holds every field Tollway sets, nothing is sent.
A changed rendering (a field added, changed or removed) changes the hash, so the apply is sent and
server-side apply drops the fields Tollway no longer sets; an edit by hand breaks the containment, so the
apply is sent and restores them. When the comparison cannot tell (the API server normalised a value), the
apply is sent anyway: a server-side apply that changes nothing does not write to etcd.

An `Applier` also remembers, per child, the resourceVersion at which it last found (or made) the child
current and the hash it held then. While the operator's watch shows the child still at that version, the
child cannot have changed, so even the read is skipped: a reconcile of an unchanged model reads nothing.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

from kubernetes import dynamic
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic.exceptions import ResourceNotFoundError

from tollway.k8s.client import api_client

FIELD_MANAGER = "tollway"
HASH_ANNOTATION = "tollway.dev/applied-hash"


class ApplyError(RuntimeError):
    """The API server refused a child: the object and its message, for status and events."""


@cache
def _dynamic() -> dynamic.DynamicClient:
    # Discovery into a file of this process's own: the client's default file is shared by every process
    # that talks to the same address and outlives the cluster, so a kind served there once (a CRD since
    # removed, or another cluster on that port) would be sent requests that can only fail.
    private = Path(tempfile.mkdtemp(prefix="tollway-discovery-")) / "discovery.json"
    return dynamic.DynamicClient(api_client(), cache_file=str(private))


def contains(live: Any, desired: Any) -> bool:
    """Whether `live` holds every field and value of `desired` (lists item by item, same length)."""
    if isinstance(desired, Mapping):
        return isinstance(live, Mapping) and all(
            key in live and contains(live[key], value) for key, value in desired.items()
        )
    if isinstance(desired, list):
        return isinstance(live, list) and len(live) == len(desired) and all(map(contains, live, desired))
    return bool(live == desired)


def stamped(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest with the hash of its own content in an annotation."""
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:32]
    metadata = dict(manifest["metadata"])
    metadata["annotations"] = {**metadata.get("annotations", {}), HASH_ANNOTATION: digest}
    return {**manifest, "metadata": metadata}


#: The dynamic client's discovery cache is not thread-safe: a kind it does not find (KEDA's or prometheus-
#: operator's, when absent) rebuilds the cache, and a lookup on another thread meanwhile fails (KeyError).
_discovery = threading.Lock()

#: A kind the client does not know makes it rediscover the whole API (a request per group), so a kind found
#: unserved is asked about again only after this long: a CRD installed later is seen within it.
UNSERVED_RECHECK_SECONDS = 30.0
_unserved_until: dict[tuple[str, str], float] = {}


def _resource(api_version: str, kind: str) -> Any:
    """The API server's resource for a kind; ApplyError when it does not serve it (a CRD not installed)."""
    with _discovery:
        if _unserved_until.get((api_version, kind), 0.0) <= time.monotonic():
            try:
                return _dynamic().resources.get(api_version=api_version, kind=kind)
            except ResourceNotFoundError:
                _unserved_until[(api_version, kind)] = time.monotonic() + UNSERVED_RECHECK_SECONDS
    raise ApplyError(f"the cluster does not serve {api_version} {kind}: is its CRD installed?")


def served(api_version: str, kind: str) -> bool:
    try:
        _resource(api_version, kind)
    except ApplyError:
        return False
    return True


def _plain(_client: Any, body: dict[str, Any]) -> dict[str, Any]:
    """The dynamic client's serializer that keeps the parsed JSON as it is: its default builds an attribute
    tree, which `to_dict` then copies back, three copies of every object read at once at peak."""
    return body


def read(manifest: Mapping[str, Any]) -> dict[str, Any] | None:
    resource = _resource(manifest["apiVersion"], manifest["kind"])
    meta = manifest["metadata"]
    try:
        found: dict[str, Any] = resource.get(
            name=meta["name"], namespace=meta.get("namespace"), serializer=_plain
        )
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return found


def apply(manifest: Mapping[str, Any]) -> bool:
    """Make the cluster hold `manifest` (read first, nothing remembered); True when a request was sent."""
    desired = stamped(manifest)
    live = read(desired)
    if live is not None and contains(live, desired):
        return False
    _send(desired)
    return True


def _send(desired: Mapping[str, Any]) -> dict[str, Any]:
    """The server-side apply of `desired`; the object as the API server then holds it."""
    resource = _resource(desired["apiVersion"], desired["kind"])
    name = desired["metadata"]["name"]
    try:
        applied: dict[str, Any] = resource.server_side_apply(
            body=desired,
            name=name,
            namespace=desired["metadata"].get("namespace"),
            field_manager=FIELD_MANAGER,
            force_conflicts=True,
            serializer=_plain,
        )
    except ApiException as error:
        if error.status == 404:  # apply creates what is missing: a 404 means the kind itself is gone
            with _discovery:
                _dynamic().resources.invalidate_cache()
            raise ApplyError(
                f"the cluster no longer serves {desired['apiVersion']} {desired['kind']}"
            ) from error
        if error.status in (400, 403, 409, 422):  # refused for good: say why; others are retried
            detail = (
                json.loads(error.body or "{}").get("message", error.reason) if error.body else error.reason
            )
            raise ApplyError(f"{desired['kind']}/{name}: {detail}") from error
        raise
    return applied


def prune(namespace: str, owner_uid: str, label_selector: str, kinds: Iterable[tuple[str, str]]) -> list[str]:
    """Delete the children of these kinds that `owner_uid` owns; "Kind/name" of each one deleted."""
    deleted = []
    for api_version, kind in kinds:
        if not served(api_version, kind):
            continue  # nothing of a kind the cluster does not serve can exist
        resource = _resource(api_version, kind)
        for item in resource.get(namespace=namespace, label_selector=label_selector).items:
            owners = item.metadata.ownerReferences or []
            if any(owner.uid == owner_uid for owner in owners):
                resource.delete(name=item.metadata.name, namespace=namespace)
                deleted.append(f"{kind}/{item.metadata.name}")
    return deleted


def prune_named(namespace: str, label_selector: str, stale: Iterable[tuple[str, str, str]]) -> list[str]:
    """Delete these (apiVersion, kind, name) children where they exist and carry the selector's labels."""
    deleted = []
    for api_version, kind, name in stale:
        if not served(api_version, kind):
            continue  # nothing of a kind the cluster does not serve can exist
        resource = _resource(api_version, kind)
        found = resource.get(
            namespace=namespace, label_selector=label_selector, field_selector=f"metadata.name={name}"
        )
        if found.items:
            resource.delete(name=name, namespace=namespace)
            deleted.append(f"{kind}/{name}")
    return deleted


UNSEEN = ""
"""What `Applier`'s `watched` answers for a child of a watched kind that its watch has not seen."""

ChildKey = tuple[str, str, str, str]
"""(apiVersion, kind, namespace, name)"""


class Applier:
    """`apply` that skips the read of a child the watch shows unchanged since it was last found current.

    `watched(manifest)` answers the resourceVersion the operator's watch last saw of the child, UNSEEN when
    its watch has not seen it, None when its kind is not watched. The memory holds a version and a hash per
    child applied since the operator started (a deleted model's stay until it restarts: ~200 bytes each).
    """

    def __init__(self, watched: Callable[[Mapping[str, Any]], str | None]) -> None:
        self._watched = watched
        self._current: dict[ChildKey, tuple[str, str]] = {}  # child → (resourceVersion, hash) found current
        self._guard = threading.Lock()

    def apply(self, manifest: Mapping[str, Any]) -> bool:
        """Make the cluster hold `manifest`; True when a request was sent."""
        desired = stamped(manifest)
        metadata = desired["metadata"]
        key = (desired["apiVersion"], desired["kind"], str(metadata.get("namespace")), metadata["name"])
        digest = metadata["annotations"][HASH_ANNOTATION]
        version = self._watched(desired)
        with self._guard:
            if version and self._current.get(key) == (version, digest):
                return False
        # Not seen by its watch: new (or just gone), so apply without asking first; an apply that changes
        # nothing (the watch lagging behind) writes nothing either.
        live = None if version == UNSEEN else read(desired)
        sent = live is None or not contains(live, desired)
        if sent:
            live = _send(desired)
        found = str(((live or {}).get("metadata") or {}).get("resourceVersion") or "")
        with self._guard:
            self._current[key] = (found, digest)
        return sent

    def apply_all(self, manifests: Iterable[Mapping[str, Any]]) -> int:
        """Apply every manifest in order; the number of requests sent."""
        return sum(self.apply(manifest) for manifest in manifests)

    def is_current(self, child: Mapping[str, Any]) -> bool:
        """Whether the child (as a watch event shows it) is at the version this Applier last found or made
        current: the event is the echo of its own write, or of its read."""
        metadata = child.get("metadata") or {}
        key = (
            str(child.get("apiVersion")),
            str(child.get("kind")),
            str(metadata.get("namespace")),
            str(metadata.get("name")),
        )
        with self._guard:
            found = self._current.get(key)
        return found is not None and found[0] == metadata.get("resourceVersion")
