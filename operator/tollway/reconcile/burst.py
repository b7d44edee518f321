"""The burst floor's loop (`translate.floor` has the rule): every 2 s, each autoscaled model's queue read from
its ready Triton pods; a burst sets the Deployment's replicas at once and holds them as the autoscaler's
minimum for a while, through the model's own reconcile (the HPA or ScaledObject it renders).

Why a loop of its own and not the HPA: the HPA decides every 15 s on figures that Triton's 15 s scrape leaves
up to 15 s old; a burst after an idle spell then waits up to half a minute for its first new replica, where
a concurrency autoscaler acts within 2-4 s (README: Autoscaling). The loop only ever raises the count; every
other decision, every scale-down included, stays the autoscaler's.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tollway.api import ModelDeployment
from tollway.api.parse import InvalidResource, parse
from tollway.ir.names import serving_children
from tollway.ir.serving import Scaling
from tollway.ir.state import ReadyPod
from tollway.reconcile.floors import Key
from tollway.reconcile.reconciler import Reconciler
from tollway.reconcile.status import Logger
from tollway.translate.floor import EVERY_SECONDS, HOLD_SECONDS, raised
from tollway.translate.serving import scaling

READERS = 8
"""Pods' metrics pages read at once: a pass over many pods stays within the cadence."""


@dataclass(frozen=True)
class Watched:
    """What the loop needs of one model, parsed once per generation (a parse every 2 s of every model would
    cost more than the reads)."""

    generation: int
    model: str
    """The model's name in Triton (its metrics' `model` label)."""
    plan: Scaling | None
    """None: not a model the floor serves (a fixed count, no queue target, or an invalid spec)."""


class Burst(threading.Thread):
    def __init__(self, reconciler: Reconciler, metrics_url: str, logger: Logger) -> None:
        """`metrics_url`: where one pod's metrics page is ({pod_ip}, {pod} and {namespace} filled in)."""
        super().__init__(name="tollway-burst", daemon=True)
        self.reconciler, self.metrics_url, self.logger = reconciler, metrics_url, logger
        self.stopping = threading.Event()
        self.readers = ThreadPoolExecutor(READERS, thread_name_prefix="tollway-burst-read")
        self.watched: dict[Key, Watched] = {}

    def run(self) -> None:
        while not self.stopping.wait(EVERY_SECONDS):
            try:
                self.look()
            except Exception:  # the API server away for a moment must not end the loop
                if self.stopping.is_set():
                    return  # stopped mid-pass: its readers are gone
                self.logger.exception("the burst floor's pass failed; the next pass tries again")

    def stop(self) -> None:
        self.stopping.set()
        self.readers.shutdown(wait=False, cancel_futures=True)

    def look(self) -> None:
        """One pass: lapsed floors let go, then every autoscaled model's queue against its replicas."""
        reconciler = self.reconciler
        if not reconciler.listed.is_set():
            return
        for key in reconciler.floors.lapse():
            self._reconcile(key)
        candidates = [
            (key, watched, pods)
            for key, pods in reconciler.cluster.ready_pods().items()
            if (watched := self._watched(key)) is not None and watched.plan is not None
        ]
        queues = self.readers.map(self._queue, candidates)
        for (key, watched, _), queue in zip(candidates, queues, strict=True):
            if queue is not None and watched.plan is not None and not self.stopping.is_set():
                self._judge(key, queue, watched.plan)

    def _watched(self, key: Key) -> Watched | None:
        body = self.reconciler.cluster.cached_resource(ModelDeployment, *key)
        if body is None:
            self.watched.pop(key, None)
            return None
        generation = int(body["metadata"].get("generation") or 0)
        known = self.watched.get(key)
        if known is None or known.generation != generation:
            try:
                resource = parse(ModelDeployment, body)
            except InvalidResource:
                known = Watched(generation, "", None)
            else:
                plan = scaling(resource, prometheus_url="")
                served = plan is not None and plan.queue_depth_per_replica is not None
                known = Watched(generation, resource.model_name, plan if served else None)
            self.watched[key] = known
        return known

    def _queue(self, candidate: tuple[Key, Watched, tuple[ReadyPod, ...]]) -> float | None:
        """The requests waiting in the model's ready pods that could be read; None when none could be."""
        (namespace, _), watched, ready = candidate
        read = [
            self.reconciler.telemetry.queue_depth(
                self.metrics_url.format(pod_ip=pod.ip, pod=pod.name, namespace=namespace), watched.model
            )
            for pod in ready
        ]
        known = [waiting for waiting in read if waiting is not None]
        return sum(known) if known else None

    def _judge(self, key: Key, queue: float, plan: Scaling) -> None:
        namespace, name = key
        cluster = self.reconciler.cluster
        deployment_name = serving_children(name)["triton"]
        deployment = cluster.deployment_state(namespace, deployment_name)
        if deployment is None:
            return
        floor = raised(queue, deployment.replicas, plan, self.reconciler.floors.monotonic())
        if floor is None or self.reconciler.standing_by(namespace, self.logger):
            return
        # The watched count may be behind: a count this loop (or the autoscaler) already raised is left.
        if not cluster.raise_replicas(namespace, deployment_name, floor.replicas):
            return
        self.reconciler.floors.hold(key, floor)
        note = (
            f"{queue:.0f} requests waiting on {deployment.replicas} replicas: scaled to {floor.replicas} at"
            f" once, held as the autoscaler's minimum for {HOLD_SECONDS:.0f} s"
        )
        self.logger.info("%s/%s: %s", namespace, name, note)
        body = cluster.cached_resource(ModelDeployment, namespace, name)
        if body is not None:
            cluster.record_event(
                ModelDeployment, body["metadata"], type="Normal", reason="BurstScaledUp", note=note
            )
        self._reconcile(key)

    def _reconcile(self, key: Key) -> None:
        """The model's reconcile, which renders its autoscaler's minimum from the floors that hold."""
        body = self.reconciler.cluster.cached_resource(ModelDeployment, *key)
        if body is not None:
            self.reconciler.reconcile(ModelDeployment, body, self.logger)
