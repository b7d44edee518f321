"""The periodic resync: every resource reconciled again, whether or not a watch event said it changed."""

from __future__ import annotations

import threading

from tollway.api import ApiTier, ModelDeployment
from tollway.reconcile.reconciler import Reconciler
from tollway.reconcile.status import Logger


class Resync(threading.Thread):
    """Reconciles every resource every `settings.resync_seconds`.

    Why not kopf timers: kopf puts a finalizer on every object with a timer, and an object with a finalizer
    cannot be deleted while the operator is away (uninstalled, or stopped in a test bed). A plain loop of
    LIST calls needs no finalizer. It lists from the API server rather than from the watch cache, so that
    it converges even on what a watch missed. With several operator replicas (kopf peering) a replica that
    kopf has paused in favour of another skips its resyncs too, so only the serving replica writes.
    """

    def __init__(self, reconciler: Reconciler, logger: Logger) -> None:
        super().__init__(name="tollway-resync", daemon=True)
        self.reconciler, self.logger, self.stopping = reconciler, logger, threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.reconciler.settings.resync_seconds):
            self.resync()

    def stop(self) -> None:
        """The operator stops: no more passes, and no more reconciles (see Coalescer.stopping)."""
        self.stopping.set()
        self.reconciler.coalescer.stopping.set()

    def resync(self) -> None:
        """One pass over every watched namespace; no failure ends it early or escapes it."""
        if not self.reconciler.listed.is_set():
            return
        for namespace in self.reconciler.settings.namespaces or (None,):
            if self.reconciler.standing_by(namespace, self.logger):
                continue
            try:
                models = self.reconciler.cluster.list_resources(ModelDeployment, namespace)
                tiers = self.reconciler.cluster.list_resources(ApiTier, namespace)
            except Exception:  # the API server away for a moment must not end the loop
                self.logger.exception("resync could not list resources; the next resync retries")
                continue
            # A reconcile logs its own failure (with its object), so one object's never ends the pass.
            for body in models:
                if self.stopping.is_set():
                    return
                self.reconciler.reconcile(ModelDeployment, body, self.logger)
            for gateway in sorted({tier["metadata"]["namespace"] for tier in tiers}):
                self.reconciler.reconcile_gateway(gateway, self.logger)
