"""kopf registrations, nothing else: each handler is one line into `reconcile`.

Level-based: every watch event (any change to the resource, its status included) and a periodic resync
run the same reconcile, which writes nothing when nothing changed. Handlers return None, so kopf writes no
handler results into status.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from tollway.api import GROUP, VERSION, ApiTier, ModelDeployment
from tollway.reconcile import Logger, reconcile
from tollway.settings import Settings

FINALIZER = "tollway.dev/finalizer"


def registry(settings: Settings) -> kopf.OperatorRegistry:
    handlers = kopf.OperatorRegistry()
    md, tier = (GROUP, VERSION, ModelDeployment.plural), (GROUP, VERSION, ApiTier.plural)
    every = settings.resync_seconds

    @kopf.on.login(registry=handlers)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)  # the same credentials as our own kubernetes client

    @kopf.on.startup(registry=handlers)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        _configure(settings)

    @kopf.on.event(*md, registry=handlers)
    def model_deployment_event(body: kopf.Body, logger: Logger, **_: Any) -> None:
        reconcile(ModelDeployment, body, logger)

    @kopf.timer(*md, interval=every, registry=handlers)
    def model_deployment_resync(body: kopf.Body, logger: Logger, **_: Any) -> None:
        reconcile(ModelDeployment, body, logger)

    @kopf.on.event(*tier, registry=handlers)
    def api_tier_event(body: kopf.Body, logger: Logger, **_: Any) -> None:
        reconcile(ApiTier, body, logger)

    @kopf.timer(*tier, interval=every, registry=handlers)
    def api_tier_resync(body: kopf.Body, logger: Logger, **_: Any) -> None:
        reconcile(ApiTier, body, logger)

    return handlers


def _configure(settings: kopf.OperatorSettings) -> None:
    settings.persistence.finalizer = FINALIZER  # the resync timers need one; name it as ours
    settings.posting.level = logging.INFO  # condition changes become Kubernetes events
    settings.watching.server_timeout = 300
