"""The burst floor's loop (`translate.floor` has the rule): every 2 s, each autoscaled model's queue read from
its ready Triton pods; a burst sets the Deployment's replicas at once and holds them as the autoscaler's
minimum for a while, through the model's own reconcile (the HPA or ScaledObject it renders).

Why a loop of its own and not the HPA: the HPA decides every 15 s on figures that Triton's 15 s scrape leaves
up to 15 s old; a burst after an idle spell then waits up to half a minute for its first new replica, where
a concurrency autoscaler acts within 2-4 s (README: "Burst floor"). The loop only ever raises the count; every
other decision, every scale-down included, stays the autoscaler's.
"""

from __future__ import annotations

import threading
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from tollway.api import ModelDeployment
from tollway.api.parse import InvalidResource, parse
from tollway.ir.names import serving_children
from tollway.ir.serving import Scaling
from tollway.ir.state import ReadyPod
from tollway.reconcile.floors import Key
from tollway.reconcile.reconciler import Reconciler
from tollway.reconcile.status import Logger
from tollway.translate.floor import EVERY_SECONDS, HOLD_SECONDS, raised, serves
from tollway.translate.serving import scaling

READERS = 8
"""Pods' metrics pages read at once: a pass over many pods stays within the cadence."""


@dataclass(frozen=True)
class Watched:
    """What the loop needs of one model, parsed once per object and generation (a parse every 2 s of every
    model would cost more than the reads)."""

    uid: str
    generation: int
    model: str
    """The model's name in Triton (its metrics' `model` label)."""
    plan: Scaling | None
    """None: not a model the floor serves (a fixed count, no queue target, or an invalid spec)."""


class Burst(threading.Thread):
    """The loop, on a thread of its own beside the resync; `look` is one pass."""

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
        """One pass: lapsed floors let go, then every autoscaled model's queue against its replicas. Only
        the serving peering replica reads or writes; a pod slower than the pass is left out of it."""
        reconciler = self.reconciler
        if not reconciler.listed.is_set():
            return
        for key in reconciler.floors.lapse():
            self._reconcile(key)
        pods = reconciler.cluster.ready_pods()
        for gone in self.watched.keys() - pods.keys():
            del self.watched[gone]
        plans: dict[Key, Scaling] = {}
        reads: dict[Key, list[Future[float | None]]] = {}
        standing: dict[str | None, bool] = {}
        for key, ready in pods.items():
            watched = self._watched(key)
            if watched is None or watched.plan is None:
                continue
            scope = self._scope(key[0])
            if scope not in standing:
                standing[scope] = reconciler.standing_by(scope, self.logger)
            if not standing[scope]:
                plans[key] = watched.plan
                reads[key] = [self.readers.submit(self._queue, key[0], watched.model, pod) for pod in ready]
        everything = [read for model_reads in reads.values() for read in model_reads]
        futures.wait(everything, timeout=EVERY_SECONDS)
        for read in everything:
            read.cancel()  # not started yet: the next pass asks again
        for key, model_reads in reads.items():
            answered = [read for read in model_reads if read.done() and not read.cancelled()]
            known = [read.result() for read in answered if read.exception() is None]
            waiting = [value for value in known if value is not None]
            if waiting and not self.stopping.is_set():
                try:
                    self._judge(key, sum(waiting), plans[key])
                except Exception:  # one model's failure (the API server refusing its scale) is its own
                    self.logger.exception("the burst floor could not raise %s/%s", *key)

    def _scope(self, namespace: str) -> str | None:
        """Where kopf's peering object is: the namespace's when the operator watches named ones, else the
        cluster's (as the resync asks)."""
        return namespace if self.reconciler.settings.namespaces else None

    def _watched(self, key: Key) -> Watched | None:
        body = self.reconciler.cluster.cached_resource(ModelDeployment, *key)
        if body is None:
            return None
        uid, generation = str(body["metadata"].get("uid")), int(body["metadata"].get("generation") or 0)
        known = self.watched.get(key)
        if known is None or (known.uid, known.generation) != (uid, generation):
            try:
                resource = parse(ModelDeployment, body)
            except InvalidResource:
                known = Watched(uid, generation, "", None)
            else:
                plan = scaling(resource, prometheus_url="")
                known = Watched(uid, generation, resource.model_name, plan if serves(plan) else None)
            self.watched[key] = known
        return known

    def _queue(self, namespace: str, model: str, pod: ReadyPod) -> float | None:
        url = self.metrics_url.format(pod_ip=pod.ip, pod=pod.name, namespace=namespace)
        return self.reconciler.telemetry.queue_depth(url, model)

    def _judge(self, key: Key, queue: float, plan: Scaling) -> None:
        namespace, name = key
        cluster, floors = self.reconciler.cluster, self.reconciler.floors
        deployment_name = serving_children(name)["triton"]
        deployment = cluster.deployment_state(namespace, deployment_name)
        if deployment is None:
            return
        floor = raised(queue, deployment.replicas, plan, floors.monotonic())
        if floor is None or floors.replicas(key) >= floor.replicas:
            return  # no burst, or one held already (the watch may not show its count yet)
        # The floor is rendered first: the HPA controller applies a new minimum at once (Kubernetes 1.37's
        # does, a sync of its own), and never finds a count it may halve on older figures. The count is then
        # set on the scale too, for an autoscaler that waits for its next sync (KEDA copies the minimum into
        # its HPA first); it is left alone where the autoscaler got there first.
        floors.hold(key, floor)
        self._reconcile(key)
        cluster.raise_replicas(namespace, deployment_name, floor.replicas)
        note = (
            f"a burst: {queue:.0f} requests waiting with the Deployment at {deployment.replicas}; scaled to"
            f" {floor.replicas} at once, held as the autoscaler's minimum for {HOLD_SECONDS:.0f} s"
        )
        self.logger.info("%s/%s: %s", namespace, name, note)
        body = cluster.cached_resource(ModelDeployment, namespace, name)
        if body is not None:
            cluster.record_event(
                ModelDeployment, body["metadata"], type="Normal", reason="BurstScaledUp", note=note
            )

    def _reconcile(self, key: Key) -> None:
        """The model's reconcile, which renders its autoscaler's minimum from the floors that hold."""
        body = self.reconciler.cluster.cached_resource(ModelDeployment, *key)
        if body is not None:
            self.reconciler.reconcile(ModelDeployment, body, self.logger)
