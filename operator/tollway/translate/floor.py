"""The burst floor: how the operator answers a sudden burst within seconds, where the HPA takes up to a sync
(15 s) on figures up to a scrape (15 s) old. Pure, so that a unit test states each case and the scaling
simulator (hack/testbed/scaling.py) plays the same rule the operator runs.

Every `EVERY_SECONDS` the operator reads Triton's queue from the model's ready pods and asks for one
replica per `queueDepthPerReplica` waiting. An ask of at least `PANIC` times the replicas the Deployment
has is a burst: the operator holds that count as the autoscaler's minimum for `HOLD_SECONDS` (the HPA
applies a new minimum at once) and sets it on the Deployment too, so that the HPA, deciding on older
figures, cannot take it back before the new replicas report. Everything else (smaller asks, every
scale-down) stays the HPA's (README: "Burst floor").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tollway.ir.serving import Scaling

EVERY_SECONDS = 2.0
PANIC = 2.0
"""How many times the replicas there are an ask must reach to be a burst: below it, the HPA's next sync is
soon enough (bench/scaling.py)."""
HOLD_SECONDS = 30.0


@dataclass(frozen=True)
class Floor:
    replicas: int
    until: float
    """When it lapses (the operator's monotonic clock, seconds)."""


def serves(scaling: Scaling | None) -> bool:
    """Whether the floor serves a model: it scales on a queue target, and its spec asks for no scale-up
    stabilization (a window of its own says it would rather wait for the load to last than meet a burst)."""
    return (
        scaling is not None and scaling.queue_depth_per_replica is not None and scaling.scale_up_seconds == 0
    )


def raised(queue: float, replicas: int, scaling: Scaling, now: float) -> Floor | None:
    """The floor a burst asks for: `queue` requests waiting in Triton over the model's ready pods while its
    Deployment has `replicas`; None when it is no burst, the floor does not serve the model (`serves`), or
    it has no replica to have read the queue from (waking from zero is the gateway's signal)."""
    target = scaling.queue_depth_per_replica
    if not serves(scaling) or target is None or replicas < 1:
        return None
    asked = min(math.ceil(queue / target), scaling.max_replicas)
    return Floor(asked, now + HOLD_SECONDS) if asked >= PANIC * replicas else None
