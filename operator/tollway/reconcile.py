"""One reconcile per resource: read → translate → apply → status. Level-based: safe to run any time."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from tollway.api import Resource
from tollway.k8s.status import apply_status
from tollway.translate import translate
from tollway.translate.conditions import changed_conditions, settle

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
        result = translate(kind, body, now=datetime.now(UTC))
        current = body.get("status") or {}
        status = settle(current, result.status)
        if status is None:
            return
        apply_status(kind, metadata, status)
        for item in changed_conditions(current, status):
            level = logging.WARNING if item.reason == "InvalidSpec" else logging.INFO
            logger.log(level, "%s=%s (%s): %s", item.type, item.status, item.reason, item.message)
