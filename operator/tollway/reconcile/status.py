"""Writing the status a translation computed, safely against the other threads that write it too."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from tollway.api import Resource
from tollway.reconcile.cluster import Cluster
from tollway.translate.conditions import changed_conditions, event_type, settle

Logger = logging.Logger | logging.LoggerAdapter[Any]


def write_status(
    cluster: Cluster,
    kind: type[Resource],
    body: Mapping[str, Any],
    desired: Mapping[str, Any],
    logger: Logger,
) -> None:
    """Write `desired` unless the object shows it already; log and record an event per changed condition."""
    metadata = body["metadata"]
    if settle(body.get("status") or {}, desired) is None:
        return  # the steady state: nothing read, nothing written
    # The event or resync that brought `body` may be older than a status write another thread just made.
    latest = cluster.read_resource(kind, metadata["namespace"], metadata["name"])
    if latest is None:
        return  # deleted since: nothing left to report on
    current = latest.get("status") or {}
    status = settle(current, _with_stale_metrics(desired, current))
    if status is None or not cluster.apply_status(kind, metadata, status):
        return
    for item in changed_conditions(current, status):
        note = f"{item.type}={item.status} ({item.reason}): {item.message}"
        announce = event_type(item)
        logger.log(logging.WARNING if announce == "Warning" else logging.INFO, "%s", note)
        if announce:
            cluster.record_event(kind, metadata, type=announce, reason=item.reason, note=note)


def _with_stale_metrics(desired: Mapping[str, Any], current: Mapping[str, Any]) -> Mapping[str, Any]:
    """When Prometheus could not be asked, the figures (a model's metrics and cost, a tier's usage and SLA)
    stay as the cluster holds them now, not as the older copy the event carried, so `observedAt` never moves
    back."""
    unavailable = any(
        item.get("type") == "MetricsAvailable" and item.get("status") == "False"
        for item in desired.get("conditions", [])
    )
    if not unavailable:
        return desired
    return {**desired, **{key: current[key] for key in ("metrics", "cost", "usage", "sla") if key in current}}
