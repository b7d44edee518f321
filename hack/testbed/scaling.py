"""The scaling simulator: a queueing model of Triton replicas with dynamic batching, the HPA controller's
algorithm, the operator's burst floor under it, a Knative-style concurrency autoscaler, and the traces they
are played on. bench/scaling.py compares policies with it; tests/integration/test_scaling_simulator.py
checks it against the real loop (the HPA and the operator).

The HPA part follows the controller (pkg/controller/podautoscaler): per metric a desired count from the
usage ratio (AverageValue: ceil(total / target); Value and Utilization: ceil(ready pods x ratio)), no change
within the 10 % tolerance, the largest desire across metrics, stabilization windows (the lowest
recommendation of the scale-up window, the highest of the scale-down window), and the rate policies, every
sync, on metrics `lag` seconds old. The replicas: a new one serves after `startup` seconds (pod start and
model load); each serves batches of up to 8 with a batch time of 50 ms + 15 ms per request, so a replica
finishes about 47 requests/s under load; CPU is 10 % idle plus 30 % of the busy share (the GPU does the
work, which is why CPU is a poor signal for inference).
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from tollway.ir.serving import Scaling
from tollway.translate.floor import EVERY_SECONDS as FLOOR_EVERY_SECONDS
from tollway.translate.floor import raised

STEP = 1.0  # seconds
SYNC, LAG, STARTUP = 15, 30, 60
TOLLWAY_LAG = 10
"""The age of Tollway's signals when the HPA reads them: Triton's gauges and counters scraped every 15 s
(7.5 s old on average) and queried live by prometheus-adapter. LAG (30 s) is the older model's, which
went through recording rules."""
MIN_REPLICAS, MAX_REPLICAS = 1, 12
SLO_P99_MS, SLO_WINDOW = 1000.0, 30
TOLERANCE = 0.1
QUEUE_TARGET = 4
"""Requests waiting per replica: the simulator's queue target (the sample model's `queueDepthPerReplica`)."""
FLOOR_LAG = 2
"""The age of the queue the burst floor reads: Triton's gauge, read from the pods every 2 s."""


def bursty(minutes: int, seed: int) -> list[int]:
    """Requests per second: a daily-shaped base with bursts (3-5x for 1-3 minutes), Poisson noise."""
    rng = random.Random(seed)
    rates = []
    burst_until, burst_factor = -1, 1.0
    for second in range(minutes * 60):
        base = 25 + 15 * math.sin(2 * math.pi * second / 1800)
        if second > burst_until and rng.random() < 1 / 420:  # a burst every 7 minutes on average
            burst_until, burst_factor = second + rng.randint(60, 180), rng.uniform(3, 5)
        rate = base * (burst_factor if second <= burst_until else 1.0)
        rates.append(_poisson(rng, rate))
    return rates


def diurnal(minutes: int, seed: int) -> list[int]:
    """A day compressed into the run: a night of 4 requests a second rising smoothly to a midday peak of
    200 and back, with Poisson noise and a little minute-to-minute drift."""
    rng = random.Random(seed)
    rates, drift = [], 1.0
    for second in range(minutes * 60):
        if second % 60 == 0:
            drift = min(1.2, max(0.8, drift + rng.uniform(-0.05, 0.05)))
        daylight = max(0.0, math.sin(math.pi * second / (minutes * 60))) ** 2
        rates.append(_poisson(rng, (4 + 196 * daylight) * drift))
    return rates


def spike_after_idle(minutes: int, seed: int) -> list[int]:
    """Mostly idle (1 request a second), with a sudden spike every 15 minutes: 80 to 160 requests a second
    for 3 to 6 minutes (a batch job, a launch, a retrying client)."""
    rng = random.Random(seed)
    rates = []
    spikes = []
    for quarter in range(10 * 60, minutes * 60, 15 * 60):
        start = quarter + rng.randint(0, 59)  # at no particular phase of the autoscalers' sync
        spikes.append((start, start + rng.randint(180, 360), rng.uniform(80, 160)))
    for second in range(minutes * 60):
        rate = next((level for start, end, level in spikes if start <= second < end), 1.0)
        rates.append(_poisson(rng, rate))
    return rates


TRACES: dict[str, Callable[[int, int], list[int]]] = {
    "bursty": bursty,
    "diurnal": diurnal,
    "spike after idle": spike_after_idle,
}


def _poisson(rng: random.Random, mean: float) -> int:
    # Normal approximation: fine for the rates here (tens per second).
    return max(0, round(rng.gauss(mean, math.sqrt(mean))))


def batch_seconds(batch: int) -> float:
    return 0.050 + 0.015 * batch


@dataclass
class Cluster:
    """Replicas (ready, and starting with their ready time) and one shared queue (Triton per replica,
    behind a balancer: a shared queue is the ideal the balancer approximates)."""

    startup: float = STARTUP
    """Seconds from a replica's creation to its first request (pod start and model load)."""
    ready: int = MIN_REPLICAS
    starting: list[float] = field(default_factory=list)
    queue: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def replicas(self) -> int:
        return self.ready + len(self.starting)

    def step(self, now: float, arrived: int) -> None:
        self.ready += sum(1 for at in self.starting if at <= now)
        self.starting = [at for at in self.starting if at > now]
        self.queue += arrived
        per_replica = self.queue / max(self.ready, 1)
        batch = max(1, min(8, math.ceil(per_replica)))
        capacity = self.ready * batch / batch_seconds(batch) * STEP
        served = min(self.queue, capacity)
        busy = served / capacity if capacity else 1.0
        self.queue -= served
        throughput = max(capacity, 1e-9)
        # A request arriving now waits for the queue ahead of it, then its batch.
        wait_ms = self.queue / throughput * STEP * 1000
        self.history.append(
            {
                "arrived": arrived,
                "served": served,
                "batches": served / batch,
                "batch_seconds": batch_seconds(batch),
                "queue": self.queue,
                "inflight": self.queue + served * batch_seconds(batch),
                "wait_ms": wait_ms,
                "latency_ms": wait_ms + batch_seconds(batch) * 1000,
                "cpu": 0.10 + 0.30 * busy,
                "busy": self.ready * busy,  # replicas' worth of time spent executing batches
                "replicas": self.replicas,
                "ready": self.ready,
            }
        )

    def resize(self, now: float, desired: int) -> None:
        if desired > self.replicas:
            self.starting += [now + self.startup] * (desired - self.replicas)
        while desired < self.replicas:  # starting pods go first, then ready ones
            if self.starting:
                self.starting.pop()
            else:
                self.ready -= 1


def p99(latencies: list[tuple[float, int]]) -> float:
    """The 99th percentile of per-second latencies weighted by the requests that arrived in each second."""
    total = sum(count for _, count in latencies)
    if total == 0:
        return 0.0
    seen = 0
    for latency, count in sorted(latencies):
        seen += count
        if seen >= 0.99 * total:
            return latency
    return latencies[-1][0]


Metric = Callable[[Cluster, int], float]
"""A metric as the autoscaler sees it: computed from the history up to the second given (its lag earlier)."""


def _at(cluster: Cluster, index: int) -> dict[str, float]:
    return cluster.history[max(0, min(index, len(cluster.history) - 1))]


def _minute(cluster: Cluster, seen: int) -> list[dict[str, float]]:
    """The minute of history up to `seen`, as a rate() over [1m] reads it."""
    return cluster.history[max(0, seen - 60) : max(1, seen + 1)]


def queue_total(cluster: Cluster, seen: int) -> float:
    return _at(cluster, seen)["queue"]


def model_p99(cluster: Cluster, seen: int) -> float:
    return p99([(entry["latency_ms"], int(entry["arrived"])) for entry in _minute(cluster, seen)])


def busy_total(cluster: Cluster, seen: int) -> float:
    """Replicas' worth of time spent executing over the last 45 s (render/autoscaling.BUSY_METRIC: Triton's
    compute time per execution times its executions, as rates, summed over the model's pods)."""
    window = cluster.history[max(0, seen - 45) : max(1, seen + 1)]
    return sum(entry["busy"] for entry in window) / len(window)


def queued_p99(cluster: Cluster, seen: int) -> float:
    """The model's P99 while requests wait in its queue, else 0 (render/autoscaling.P99_METRIC): more
    replicas shorten the time spent waiting, never the model's own."""
    return model_p99(cluster, seen) if queue_total(cluster, seen) >= 1 else 0.0


def cpu_utilisation(cluster: Cluster, seen: int) -> float:
    window = _minute(cluster, seen)
    return sum(entry["cpu"] for entry in window) / len(window)


@dataclass
class Hpa:
    """The HPA controller's replica calculation, behaviour and stabilization."""

    metrics: list[tuple[str, Metric, float]]
    """(type, metric, target): type is AverageValue, Value or Utilization."""
    lag: int = LAG
    """How old the metrics are when the controller reads them."""
    up_window: int = 0
    down_window: int = 300
    up_policy: tuple[float, int] = (1.0, 4)
    """At most this share more, or this many pods more (the larger), per 15 s."""
    down_policy: tuple[float, int] = (0.5, 60)
    """At most this share fewer per this many seconds."""
    min_replicas: int = MIN_REPLICAS
    max_replicas: int = MAX_REPLICAS
    recommendations: deque[tuple[int, int]] = field(default_factory=deque)
    events: deque[tuple[int, int]] = field(default_factory=deque)

    def desired(self, cluster: Cluster, now: int) -> int:
        current = cluster.replicas
        wanted = self.min_replicas
        for kind, metric, target in self.metrics:
            value = metric(cluster, now - self.lag)
            if kind == "AverageValue":
                ratio = value / (target * current)
                proposal = current if abs(ratio - 1) <= TOLERANCE else math.ceil(value / target)
            else:  # Value and Utilization scale the pods that report: the ready ones
                ratio = value / target
                ready = max(cluster.ready, 1)
                proposal = current if abs(ratio - 1) <= TOLERANCE else math.ceil(ready * ratio)
            wanted = max(wanted, proposal)
        wanted = min(max(wanted, self.min_replicas), self.max_replicas)
        self.recommendations.append((now, wanted))
        horizon = max(self.up_window, self.down_window)
        while self.recommendations and self.recommendations[0][0] < now - horizon:
            self.recommendations.popleft()
        up = min(value for at, value in self.recommendations if at >= now - self.up_window)
        down = max(value for at, value in self.recommendations if at >= now - self.down_window)
        stabilized = min(max(current, up), down)  # the controller's clamp of the current count
        return self._limit(current, stabilized, now)

    def _limit(self, current: int, desired: int, now: int) -> int:
        while self.events and self.events[0][0] < now - 60:
            self.events.popleft()
        if desired > current:
            since = current - sum(change for at, change in self.events if at >= now - 15 and change > 0)
            share, pods = self.up_policy
            limit = max(math.ceil(since * (1 + share)), since + pods)
            desired = min(desired, limit)
        elif desired < current:
            share, period = self.down_policy
            since = current - sum(change for at, change in self.events if at >= now - period and change < 0)
            desired = max(desired, int(since * (1 - share)))  # the controller truncates going down
        if desired != current:
            self.events.append((now, desired - current))
        return desired


@dataclass
class Kpa:
    """Knative's autoscaler on concurrency: stable (60 s) and panic (6 s) windows, panic at 200 %."""

    target: float = 8.0
    panicking_until: int = -1

    def desired(self, cluster: Cluster, now: int) -> int:
        seen = cluster.history[: max(1, now - 2 + 1)]  # Knative's own metrics are a couple of seconds old
        stable = sum(entry["inflight"] for entry in seen[-60:]) / len(seen[-60:])
        panic = sum(entry["inflight"] for entry in seen[-6:]) / len(seen[-6:])
        current = cluster.replicas
        stable_want, panic_want = math.ceil(stable / self.target), math.ceil(panic / self.target)
        if panic_want >= 2 * max(cluster.ready, 1):
            self.panicking_until = now + 60
        wanted = max(stable_want, panic_want, current) if now <= self.panicking_until else stable_want
        return min(max(wanted, MIN_REPLICAS), MAX_REPLICAS)


@dataclass
class Floored:
    """The HPA with the burst floor under it (tollway.translate.floor, the operator's own rule): every
    `every` seconds the queue, `lag` seconds old (read from the pods, no scrape between), and when it asks
    for at least twice the replicas there are, that count at once, held as the HPA's minimum for a while.
    The HPA decides every `sync` seconds as ever. `simulate` must ask it every second."""

    hpa: Hpa
    sync: int = SYNC
    every: int = int(FLOOR_EVERY_SECONDS)
    lag: int = FLOOR_LAG
    until: float = -1.0

    def __post_init__(self) -> None:
        self.least = self.hpa.min_replicas
        self.scaling = Scaling(
            engine="hpa",
            min_replicas=self.least,
            max_replicas=self.hpa.max_replicas,
            utilization=None,
            queue_depth_per_replica=QUEUE_TARGET,
            p99_latency_ms=None,
            scale_up_seconds=0,
            scale_down_seconds=0,
            prometheus_url="",
        )

    def desired(self, cluster: Cluster, now: int) -> int:
        if now % self.every == 0:
            floor = raised(queue_total(cluster, now - self.lag), cluster.replicas, self.scaling, float(now))
            if floor is not None:
                self.hpa.min_replicas, self.until = floor.replicas, floor.until
            elif now >= self.until:
                self.hpa.min_replicas = self.least
        current = max(cluster.replicas, self.hpa.min_replicas)
        return self.hpa.desired(cluster, now) if now % self.sync == 0 else current


@dataclass
class Outcome:
    name: str
    violation_seconds: int
    replica_seconds: float
    peak: int
    p99_wait_ms: float
    replicas: list[int]
    """Replicas (ready and starting) each second."""
    window_p99_ms: list[float]
    """The P99 latency of the last SLO_WINDOW seconds, each second."""


def weighted(entries: list[dict[str, float]], field_name: str) -> list[tuple[float, int]]:
    return [(entry[field_name], int(entry["arrived"])) for entry in entries]


Scaler = Hpa | Kpa | Floored


def simulate(name: str, trace: list[int], scaler: Scaler, every: int, startup: float = STARTUP) -> Outcome:
    """`trace` (requests each second) served by replicas that `scaler` sizes every `every` seconds."""
    cluster = Cluster(startup)
    for second, arrived in enumerate(trace):
        cluster.step(float(second), arrived)
        if second % every == 0 and second > 0:
            cluster.resize(float(second), scaler.desired(cluster, second))
    history = cluster.history
    window_p99 = [
        p99(weighted(history[max(0, second - SLO_WINDOW + 1) : second + 1], "latency_ms"))
        for second in range(len(trace))
    ]
    return Outcome(
        name,
        violation_seconds=sum(1 for value in window_p99 if value > SLO_P99_MS),
        replica_seconds=sum(entry["replicas"] for entry in history) * STEP,
        peak=int(max(entry["replicas"] for entry in history)),
        p99_wait_ms=p99(weighted(history, "wait_ms")),
        replicas=[int(entry["replicas"]) for entry in history],
        window_p99_ms=window_p99,
    )


def tollway_default(lag: int = TOLLWAY_LAG, max_replicas: int = MAX_REPLICAS, sync: int = SYNC) -> Floored:
    """What a model that sets only targets gets: the HPA Tollway renders (`tollway_hpa`) with the operator's
    burst floor under it."""
    return Floored(tollway_hpa(lag, max_replicas), sync=sync)


def tollway_hpa(lag: int = TOLLWAY_LAG, max_replicas: int = MAX_REPLICAS) -> Hpa:
    """The HPA Tollway renders for a model that sets only targets (render/autoscaling.py), on the
    simulator's model (queue target 4, P99 target 800 ms): utilization 0.7, the P99 while requests wait,
    no stabilization, up ten times or +16 pods per 15 s, down half a minute."""
    return Hpa(
        [
            ("AverageValue", busy_total, 0.7),
            ("AverageValue", queue_total, QUEUE_TARGET),
            ("Value", queued_p99, 800),
        ],
        lag=lag,
        up_window=0,
        down_window=0,
        up_policy=(9.0, 16),
        down_policy=(0.5, 60),
        max_replicas=max_replicas,
    )
