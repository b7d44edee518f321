#!/usr/bin/env python3
"""Scaling policy benchmark: the simulator of hack/testbed/scaling.py on three traces.

    .venv/bin/python bench/scaling.py [--minutes 60] [--seed 7] [--figures DIR]

Each trace (bursty, diurnal, spike after idle; a fixed seed) is served under four policies, and the table
gives per policy the seconds in SLO violation (the P99 latency of the last 30 s above the objective), the
replica-seconds (GPU cost), the peak replicas and the P99 of waiting time:

- tollway (default):    what a ModelDeployment that sets only targets gets (testbed.scaling.tollway_default):
                       the HPA Tollway renders, with the operator's burst floor under it;
- tollway, HPA alone:  the same HPA without the floor (the default until 2026-12-03; an operator run with
                       an empty --triton-metrics-url);
- queue + P99, 300 s:  the default until 2026-12-02, on its older, slower metrics;
- cpu 70 %:            CPU utilisation (Resource metric), the HPA defaults: what most clusters start with;
- concurrency 8:       in-flight requests per replica (Knative/KServe KPA: a 60 s stable window and a 6 s
                       panic window at 200 %, deciding every 2 s).

It exits non-zero unless the default beats concurrency scaling on both axes on every trace.
"""

from __future__ import annotations

import argparse

from testbed.scaling import (
    LAG,
    MAX_REPLICAS,
    MIN_REPLICAS,
    SLO_P99_MS,
    SLO_WINDOW,
    SYNC,
    TRACES,
    Hpa,
    Kpa,
    Outcome,
    Scaler,
    cpu_utilisation,
    model_p99,
    queue_total,
    simulate,
    tollway_default,
    tollway_hpa,
)

DEFAULT = "tollway (default)"
CONCURRENCY = "concurrency 8 (KPA)"


def policies() -> list[tuple[str, Scaler, int]]:
    """Each policy with how often it is asked (seconds): the default every second (its HPA keeps the
    sync, its floor its own cadence), the other HPAs every sync, the concurrency autoscaler every 2 s."""
    return [
        (DEFAULT, tollway_default(), 1),
        ("tollway, HPA alone", tollway_hpa(), SYNC),
        (
            "queue + P99, 300 s (before)",
            Hpa([("AverageValue", queue_total, 4), ("Value", model_p99, 800)], lag=LAG),
            SYNC,
        ),
        ("cpu 70 %", Hpa([("Utilization", cpu_utilisation, 0.70)], down_policy=(1.0, 15)), SYNC),
        (CONCURRENCY, Kpa(), 2),
    ]


def beats(ours: Outcome, theirs: Outcome) -> bool:
    """Fewer violation seconds and fewer replica-seconds."""
    return ours.violation_seconds < theirs.violation_seconds and ours.replica_seconds < theirs.replica_seconds


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
        ours, theirs = outcomes[0], outcomes[-1]
        wins = beats(ours, theirs)
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
