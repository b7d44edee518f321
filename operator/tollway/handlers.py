"""kopf registrations, nothing else: each handler is one line into `reconcile`.

Level-based: every watch event (any change to the resource, its status included) and a periodic resync
run the same reconcile, which writes nothing when nothing changed. Handlers return None, so kopf writes no
handler results into status.
"""

from __future__ import annotations

from typing import Any

import kopf

from tollway.api import GROUP, RESOURCES, VERSION, Resource
from tollway.reconcile import Logger, reconcile
from tollway.settings import Settings

FINALIZER = "tollway.dev/finalizer"


def registry(settings: Settings) -> kopf.OperatorRegistry:
    handlers = kopf.OperatorRegistry()

    @kopf.on.login(registry=handlers)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)  # the same credentials as our own kubernetes client

    @kopf.on.startup(registry=handlers)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        _configure(settings)

    for kind in RESOURCES:
        _watch(handlers, kind, settings.resync_seconds)
    return handlers


def _watch(handlers: kopf.OperatorRegistry, kind: type[Resource], resync_seconds: float) -> None:
    """Every watch event of `kind`, and a resync timer per object, run the same reconcile."""

    def run(body: kopf.Body, logger: Logger, **_: Any) -> None:
        reconcile(kind, body, logger)

    resource = (GROUP, VERSION, kind.plural)
    kopf.on.event(*resource, id=f"{kind.plural}-event", registry=handlers)(run)
    kopf.timer(*resource, id=f"{kind.plural}-resync", interval=resync_seconds, registry=handlers)(run)


def _configure(settings: kopf.OperatorSettings) -> None:
    settings.persistence.finalizer = FINALIZER  # the resync timers need one; name it as ours
    settings.watching.server_timeout = 300  # re-list at least every 5 minutes, whatever the network does
