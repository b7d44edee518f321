"""One reconcile per resource: read → translate → apply → status. Level-based: safe to run any time."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from tollway.api import Resource
from tollway.k8s.events import record_event
from tollway.k8s.resources import read_resource
from tollway.k8s.status import apply_status
from tollway.translate import translate
from tollway.translate.conditions import changed_conditions, event_type, settle

Logger = logging.Logger | logging.LoggerAdapter[Any]

_locks: dict[tuple[str, str, str], threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock(kind: type[Resource], metadata: Mapping[str, Any]) -> threading.Lock:
    """Watch events and the periodic resync run in different threads; one reconcile per object at a time."""
    key = (kind.kind_name, str(metadata.get("namespace")), str(metadata.get("name")))
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def reconcile(kind: type[Resource], body: Mapping[str, Any], logger: Logger) -> None:
    metadata = body.get("metadata") or {}
    if metadata.get("deletionTimestamp"):
        return  # children go with their owner (garbage collector); there is nothing to converge
    with _lock(kind, metadata):
        if _needs_status(kind, body) is None:
            return  # the steady state: nothing read, nothing written
        # The event or timer that brought `body` may be older than a write that another thread just made.
        latest = read_resource(kind, metadata["namespace"], metadata["name"])
        status = _needs_status(kind, latest) if latest else None
        if latest is None or status is None or not apply_status(kind, metadata, status):
            return
        for item in changed_conditions(latest.get("status") or {}, status):
            note = f"{item.type}={item.status} ({item.reason}): {item.message}"
            announce = event_type(item)
            logger.log(logging.WARNING if announce == "Warning" else logging.INFO, "%s", note)
            if announce:
                record_event(kind, metadata, type=announce, reason=item.reason, note=note)


def _needs_status(kind: type[Resource], body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The status to write for `body`, or None when it already shows what the translation computes."""
    result = translate(kind, body, now=datetime.now(UTC))
    return settle(body.get("status") or {}, result.status)
