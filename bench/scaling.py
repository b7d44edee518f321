#!/usr/bin/env python3
"""Scaling policy benchmark: a simulator of the HPA algorithm driving a queueing model of Triton replicas.

    .venv/bin/python bench/scaling.py [--minutes 60] [--seed 7]

The same bursty arrival trace is served under three policies, and the table gives the seconds in SLO
violation (the P99 latency of the last 30 s above the objective) and the replica-seconds (GPU cost):

- tollway:      queue depth per replica (External, AverageValue 4) and model P99 (External, Value 800 ms),
                scale-up stabilization 0 s, scale-down 300 s: Tollway's rendered HPA;
- cpu:          CPU utilisation 70 % (Resource metric), the HPA defaults: what most clusters start with;
- concurrency:  in-flight requests per replica, target 8 (Knative/KServe KPA: a 60 s stable window and a
                6 s panic window at 200 %).

The HPA part follows the controller (pkg/controller/podautoscaler): per metric a desired count from the
usage ratio (AverageValue: ceil(total / target); Value and Utilization: ceil(ready pods x ratio)), no change
within the 10 % tolerance, the largest desire across metrics, stabilization windows (the lowest
recommendation of the scale-up window, the highest of the scale-down window), and the rate policies (up:
the larger of +100 % or +4 pods per 15 s; down: Tollway's -50 % per 60 s, the default -100 % per 15 s),
every 15 s sync, on metrics 30 s old (scrape, recording rule, adapter). The replicas: a new one serves
after 60 s (pod start and model load); each serves batches of up to 8 with a batch time of 50 ms + 15 ms per
request (dynamic batching), so a replica finishes about 40 requests/s under load; CPU is 10 % idle plus 30 %
of the busy share (the GPU does the work, which is why CPU is a poor signal for inference).
"""

from __future__ import annotations

import argparse
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

STEP = 1.0  # seconds
SYNC, LAG, STARTUP = 15, 30, 60
MIN_REPLICAS, MAX_REPLICAS = 1, 12
SLO_P99_MS, SLO_WINDOW = 1000.0, 30
TOLERANCE = 0.1


def arrivals(minutes: int, seed: int) -> list[int]:
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


def _poisson(rng: random.Random, mean: float) -> int:
    # Normal approximation: fine for the rates here (tens per second).
    return max(0, round(rng.gauss(mean, math.sqrt(mean))))


def batch_seconds(batch: int) -> float:
    return 0.050 + 0.015 * batch


@dataclass
class Cluster:
    """Replicas (ready, and starting with their ready time) and one shared queue (Triton per replica,
    behind a balancer: a shared queue is the ideal the balancer approximates)."""

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
        latency_ms = (self.queue / throughput * STEP + batch_seconds(batch)) * 1000
        self.history.append(
            {
                "arrived": arrived,
                "queue": self.queue,
                "inflight": self.queue + served * batch_seconds(batch),
                "latency_ms": latency_ms,
                "cpu": 0.10 + 0.30 * busy,
                "replicas": self.replicas,
                "ready": self.ready,
            }
        )

    def resize(self, now: float, desired: int) -> None:
        if desired > self.replicas:
            self.starting += [now + STARTUP] * (desired - self.replicas)
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
"""The metric as the autoscaler sees it: computed from history as it was LAG seconds ago."""


def _at(cluster: Cluster, index: int) -> dict[str, float]:
    return cluster.history[max(0, index)]


def queue_total(cluster: Cluster, now: int) -> float:
    return _at(cluster, now - LAG)["queue"]


def model_p99(cluster: Cluster, now: int) -> float:
    start = max(0, now - LAG - 60)
    window = cluster.history[start : max(start + 1, now - LAG + 1)]
    return p99([(entry["latency_ms"], int(entry["arrived"])) for entry in window])


def cpu_utilisation(cluster: Cluster, now: int) -> float:
    window = cluster.history[max(0, now - LAG - 60) : max(1, now - LAG + 1)]
    return sum(entry["cpu"] for entry in window) / len(window)


@dataclass
class Hpa:
    """The HPA controller's replica calculation, behaviour and stabilization."""

    metrics: list[tuple[str, Metric, float]]
    """(type, metric, target): type is AverageValue, Value or Utilization."""
    up_window: int = 0
    down_window: int = 300
    down_policy: tuple[float, int] = (0.5, 60)
    recommendations: deque[tuple[int, int]] = field(default_factory=deque)
    events: deque[tuple[int, int]] = field(default_factory=deque)

    def desired(self, cluster: Cluster, now: int) -> int:
        current = cluster.replicas
        wanted = MIN_REPLICAS
        for kind, metric, target in self.metrics:
            value = metric(cluster, now)
            if kind == "AverageValue":
                ratio = value / (target * current)
                proposal = current if abs(ratio - 1) <= TOLERANCE else math.ceil(value / target)
            else:  # Value and Utilization scale the pods that report: the ready ones
                ratio = value / target
                ready = max(cluster.ready, 1)
                proposal = current if abs(ratio - 1) <= TOLERANCE else math.ceil(ready * ratio)
            wanted = max(wanted, proposal)
        wanted = min(max(wanted, MIN_REPLICAS), MAX_REPLICAS)
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
            limit = max(since * 2, since + 4)
            desired = min(desired, limit)
        elif desired < current:
            share, period = self.down_policy
            since = current - sum(change for at, change in self.events if at >= now - period and change < 0)
            desired = max(desired, math.ceil(since * (1 - share)))
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
class Outcome:
    name: str
    violation_seconds: int
    replica_seconds: float
    peak: int
    p99_ms: float


def simulate(name: str, trace: list[int], scaler: Hpa | Kpa, every: int) -> Outcome:
    cluster = Cluster()
    for second, arrived in enumerate(trace):
        cluster.step(float(second), arrived)
        if second % every == 0 and second > 0:
            cluster.resize(float(second), scaler.desired(cluster, second))
    violation = 0
    for second in range(len(trace)):
        window = cluster.history[max(0, second - SLO_WINDOW + 1) : second + 1]
        if p99([(entry["latency_ms"], int(entry["arrived"])) for entry in window]) > SLO_P99_MS:
            violation += 1
    overall = p99([(entry["latency_ms"], int(entry["arrived"])) for entry in cluster.history])
    replica_seconds = sum(entry["replicas"] for entry in cluster.history) * STEP
    peak = int(max(entry["replicas"] for entry in cluster.history))
    return Outcome(name, violation, replica_seconds, peak, overall)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--seed", type=int, default=7)
    arguments = parser.parse_args()
    trace = arrivals(arguments.minutes, arguments.seed)
    policies: list[tuple[str, Hpa | Kpa, int]] = [
        ("tollway (queue + P99)", Hpa([("AverageValue", queue_total, 4), ("Value", model_p99, 800)]), SYNC),
        ("cpu 70 %", Hpa([("Utilization", cpu_utilisation, 0.70)], down_policy=(1.0, 15)), SYNC),
        ("concurrency 8 (KPA)", Kpa(), 2),
    ]
    outcomes = [simulate(name, trace, scaler, every) for name, scaler, every in policies]
    print(
        f"{arguments.minutes} min bursty trace (seed {arguments.seed}), {sum(trace)} requests, "
        f"SLO P99 <= {SLO_P99_MS:.0f} ms over {SLO_WINDOW} s, replicas {MIN_REPLICAS}-{MAX_REPLICAS}"
    )
    print(f"{'policy':26}{'SLO violation s':>17}{'replica-seconds':>17}{'peak':>6}{'P99 ms':>10}")
    for outcome in outcomes:
        print(
            f"{outcome.name:26}{outcome.violation_seconds:17d}{outcome.replica_seconds:17.0f}"
            f"{outcome.peak:6d}{outcome.p99_ms:10.0f}"
        )


if __name__ == "__main__":
    main()
