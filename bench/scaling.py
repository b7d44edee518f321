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
TOLLWAY_LAG = 10
"""The age of Tollway's signals when the HPA reads them: Triton's gauges and counters scraped every 15 s
(7.5 s old on average) and queried live by prometheus-adapter. LAG (30 s) is the older model's, which
went through recording rules."""
MIN_REPLICAS, MAX_REPLICAS = 1, 12
SLO_P99_MS, SLO_WINDOW = 1000.0, 30
TOLERANCE = 0.1


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
"""A metric as the autoscaler sees it: computed from the history up to the second given (its lag earlier)."""


def _at(cluster: Cluster, index: int) -> dict[str, float]:
    return cluster.history[max(0, min(index, len(cluster.history) - 1))]


def _minute(cluster: Cluster, seen: int) -> list[dict[str, float]]:
    """The minute of history up to `seen`, as a rate() over [1m] reads it."""
    return cluster.history[max(0, seen - 60) : max(1, seen + 1)]


def queue_total(cluster: Cluster, seen: int) -> float:
    return _at(cluster, seen)["queue"]


def queue_ahead(cluster: Cluster, seen: int) -> float:
    """The queue a replica started now would find when ready: the larger of the queue and its linear
    prediction STARTUP seconds ahead from the last 30 s (PromQL's predict_linear)."""
    earlier = _at(cluster, seen - 30)["queue"]
    now = _at(cluster, seen)["queue"]
    return max(now, now + (now - earlier) / 30 * STARTUP)


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
    recommendations: deque[tuple[int, int]] = field(default_factory=deque)
    events: deque[tuple[int, int]] = field(default_factory=deque)

    def desired(self, cluster: Cluster, now: int) -> int:
        current = cluster.replicas
        wanted = MIN_REPLICAS
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
            share, pods = self.up_policy
            limit = max(math.ceil(since * (1 + share)), since + pods)
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
    p99_wait_ms: float
    replicas: list[int]
    """Replicas (ready and starting) each second."""
    window_p99_ms: list[float]
    """The P99 latency of the last SLO_WINDOW seconds, each second."""


def weighted(entries: list[dict[str, float]], field_name: str) -> list[tuple[float, int]]:
    return [(entry[field_name], int(entry["arrived"])) for entry in entries]


def simulate(name: str, trace: list[int], scaler: Hpa | Kpa, every: int) -> Outcome:
    cluster = Cluster()
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


DEFAULT = "tollway (default)"


def policies() -> list[tuple[str, Hpa | Kpa, int]]:
    """Each policy with how often it decides (seconds)."""
    return [
        (
            DEFAULT,
            Hpa(
                [
                    ("AverageValue", busy_total, 0.7),
                    ("AverageValue", queue_total, 4),
                    ("Value", queued_p99, 800),
                ],
                lag=TOLLWAY_LAG,
                up_window=0,
                down_window=0,
                up_policy=(9.0, 16),
                down_policy=(0.5, 60),
            ),
            SYNC,
        ),
        (
            "queue + P99, 300 s (before)",
            Hpa([("AverageValue", queue_total, 4), ("Value", model_p99, 800)], lag=LAG),
            SYNC,
        ),
        ("cpu 70 %", Hpa([("Utilization", cpu_utilisation, 0.70)], down_policy=(1.0, 15)), SYNC),
        ("concurrency 8 (KPA)", Kpa(), 2),
    ]


def plot(path: str, title: str, trace: list[int], outcomes: list[Outcome]) -> None:
    """Load, replicas and the 30 s P99 over time, one line per policy."""
    import matplotlib  # noqa: PLC0415 (only for the figures)

    matplotlib.use("Agg")
    from matplotlib import pyplot  # noqa: PLC0415

    minutes = [second / 60 for second in range(len(trace))]
    figure, (load, replicas, latency) = pyplot.subplots(3, 1, figsize=(11, 8), sharex=True)
    load.plot(minutes, trace, color="0.4", linewidth=0.6)
    load.set_ylabel("requests / s")
    load.set_title(title)
    for outcome in outcomes:
        replicas.step(minutes, outcome.replicas, where="post", linewidth=1.1, label=outcome.name)
        latency.plot(minutes, outcome.window_p99_ms, linewidth=0.9, label=outcome.name)
    replicas.set_ylabel("replicas")
    replicas.legend(loc="upper left", fontsize=8)
    latency.axhline(SLO_P99_MS, color="red", linestyle="--", linewidth=0.8, label="SLO")
    latency.set_yscale("log")
    latency.set_ylabel(f"P99 over {SLO_WINDOW} s (ms)")
    latency.set_xlabel("minute")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    pyplot.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--figures", help="a folder to write one PNG per trace into")
    arguments = parser.parse_args()
    beaten = True
    for trace_name, make in TRACES.items():
        trace = make(arguments.minutes, arguments.seed)
        outcomes = [simulate(name, trace, scaler, every) for name, scaler, every in policies()]
        print(
            f"\n{trace_name}: {arguments.minutes} min (seed {arguments.seed}), {sum(trace)} requests, "
            f"SLO P99 <= {SLO_P99_MS:.0f} ms over {SLO_WINDOW} s, replicas {MIN_REPLICAS}-{MAX_REPLICAS}"
        )
        print(f"{'policy':30}{'SLO violation s':>17}{'replica-seconds':>17}{'peak':>6}{'P99 wait ms':>13}")
        for outcome in outcomes:
            print(
                f"{outcome.name:30}{outcome.violation_seconds:17d}{outcome.replica_seconds:17.0f}"
                f"{outcome.peak:6d}{outcome.p99_wait_ms:13.0f}"
            )
        ours, theirs = outcomes[0], next(outcome for outcome in outcomes if "KPA" in outcome.name)
        wins = (
            ours.violation_seconds < theirs.violation_seconds
            and ours.replica_seconds < theirs.replica_seconds
        )
        beaten = beaten and wins
        print(f"{DEFAULT} beats concurrency on both axes: {'yes' if wins else 'NO'}")
        if arguments.figures:
            path = f"{arguments.figures}/scaling-{trace_name.replace(' ', '-')}.png"
            plot(path, f"{trace_name} trace", trace, outcomes)
            print(f"figure: {path}")
    if not beaten:
        raise SystemExit("the default policy does not beat concurrency scaling on every trace")


if __name__ == "__main__":
    main()
