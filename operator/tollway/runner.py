"""Starting kopf with Tollway's handlers and settings."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import replace
from datetime import UTC, datetime

import kopf

from tollway.handlers import registry
from tollway.settings import Settings


class _QuietSuccess(logging.Filter):
    """Drop kopf's "Handler … succeeded" lines: a level-based reconcile runs on every watch event and resync,
    and a success line for each would bury the condition changes that Tollway logs itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.INFO and str(record.msg).endswith("succeeded."))


def utc_now() -> datetime:
    """The operator's clock (tests hand the reconciles another)."""
    return datetime.now(UTC)


def peering_priority() -> int:
    """This replica's kopf peering priority: its start time.

    kopf pauses every operator that sees a live peer of the same or a higher priority, so replicas started
    with one priority would all pause. With the start time the newest replica serves and the others stand
    by until its keep-alives stop (a rolling update hands over to the new pod at once).
    """
    # Three random digits after the milliseconds: replicas started in the same millisecond still differ.
    return time.time_ns() // 1_000_000 * 1000 + secrets.randbelow(1000)


def run_operator(settings: Settings, *, verbose: bool = False) -> None:
    if settings.peering is not None:
        settings = replace(settings, peering_priority=peering_priority())
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.JSON, log_prefix=False)
    logging.getLogger("kopf.objects").addFilter(_QuietSuccess())
    asyncio.run(
        kopf.operator(
            registry=registry(settings, utc_now),
            clusterwide=not settings.namespaces,
            namespaces=list(settings.namespaces),
            standalone=settings.peering is None,
            peering_name=settings.peering,
            priority=settings.peering_priority,
            liveness_endpoint=settings.liveness_endpoint,
        )
    )
