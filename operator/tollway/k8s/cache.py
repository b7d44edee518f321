"""Tollway's own resources by namespace as the operator's watch last saw them, from kopf's indexes.

kopf keeps an index up to date from the watch it runs anyway (`handlers` registers `seen_by_namespace` for
ApiTiers and ModelDeployments), so a reconcile finds the ApiTiers and ModelDeployments of a namespace without
listing them on every event.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from tollway.api import Resource

T = TypeVar("T")


@dataclass(frozen=True)
class Seen:
    """One object as the watch delivered it, and when kopf indexed it (time.monotonic())."""

    body: dict[str, Any]
    at: float

    @property
    def uid(self) -> str:
        return str(self.body["metadata"].get("uid"))


#: An index as kopf hands it to handlers: key → the values of every object indexed under it.
Index = Mapping[Hashable, Iterable[T]]


def index_id(kind: type[Resource]) -> str:
    """The name of the kind's index: kopf passes it to handlers as a keyword argument of this name."""
    return f"{kind.plural}_by_namespace"


def seen_by_namespace(body: Mapping[str, Any]) -> dict[str, Seen]:
    """kopf's indexing function: the object under its namespace (a copy: kopf reuses what it hands over),
    without its managedFields, which nothing reads and which are most of a body's size."""
    kept = copy.deepcopy({key: value for key, value in body.items() if key != "metadata"})
    kept["metadata"] = {
        key: copy.deepcopy(value) for key, value in body["metadata"].items() if key != "managedFields"
    }
    return {str(body["metadata"]["namespace"]): Seen(kept, time.monotonic())}


class WatchCache:
    """The bodies in kopf's indexes, less those a later LIST showed gone.

    kopf re-lists after a pause (peering) or an expired watch, and drops from an index only what a DELETED
    event names: an object deleted while the watch was away would stay in the index forever. Every LIST the
    resync makes tells which of the objects indexed before it started are gone.
    """

    def __init__(self, indexes: Mapping[str, Index[Seen]]) -> None:
        self._indexes = indexes
        self._gone: set[str] = set()  # uids; only objects whose deletion the watch missed, so it stays small

    def resources(self, kind: type[Resource], namespace: str) -> list[dict[str, Any]]:
        index = self._indexes[index_id(kind)]
        return [seen.body for seen in snapshot(index.get(namespace, ())) if seen.uid not in self._gone]

    def resource(self, kind: type[Resource], namespace: str, name: str) -> dict[str, Any] | None:
        found = (body for body in self.resources(kind, namespace) if body["metadata"]["name"] == name)
        return next(found, None)

    def listed(
        self, kind: type[Resource], namespace: str | None, items: Iterable[Mapping[str, Any]], started: float
    ) -> None:
        """A LIST of `kind` in `namespace` (all when None), begun at `started` (monotonic), found `items`."""
        index = self._indexes[index_id(kind)]
        live = {str(item["metadata"].get("uid")) for item in items}
        for key in [namespace] if namespace is not None else snapshot(index):
            for seen in snapshot(index.get(key, ())):
                if seen.at < started and seen.uid not in live:
                    self._gone.add(seen.uid)


def snapshot(values: Iterable[T]) -> list[T]:
    """kopf updates its indexes on the event loop's thread while reconciles read them on worker threads: a
    read that overlaps an update of the same dict fails ("changed size during iteration"): read again."""
    while True:
        try:
            return list(values)
        except RuntimeError:
            continue
