"""One reconcile per resource: observe → translate → apply → status. Level-based: safe to run any time.

Everything outside the process comes in as an argument: the API server (`Cluster`), Triton and Prometheus
(`Telemetry`) and the time (`Clock`), so that unit tests drive the reconciles with fakes. The mutable state
(the objects being reconciled now, whether kopf has listed the cluster yet) lives in one `Reconciler`,
which kopf's memo holds from the startup handler on; the `Resync` thread, held there too, drives it, and
the `Burst` thread raises a model's replicas between its autoscaler's syncs.
"""

from tollway.reconcile.burst import Burst
from tollway.reconcile.cluster import Clock, Cluster, Telemetry
from tollway.reconcile.reconciler import Reconciler
from tollway.reconcile.resync import Resync
from tollway.reconcile.status import Logger

__all__ = ["Burst", "Clock", "Cluster", "Logger", "Reconciler", "Resync", "Telemetry"]
