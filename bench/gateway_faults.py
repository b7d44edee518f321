#!/usr/bin/env python3
"""The gateway's data path under steady load while one component at a time is SIGKILLed and started again:

    .venv/bin/python bench/gateway_faults.py [--rounds 3] [--outage 5] [--rate 10]

On the real data path (Triton, Redis, the ratelimit service, two Envoy replicas: testbed.gatewayfaults),
four clients send RATE requests/s each (a fail-open tier and a fail-closed tier, on each replica), while
Envoy replica 1, then the ratelimit service, then Redis is SIGKILLed, left down for OUTAGE seconds and
started again, ROUNDS times. For each outage it prints the load's failed requests from the kill until the
limits were exact again (by tier, by outcome: "no answer" is a refused or cut connection), the time from
the restart until a count from zero went exactly as the limit says (5 admitted, then 429, through both
replicas), and how many requests a consumer that was over its limit before the kill got admitted again in
the same window after the recovery (0: Redis keeps its counters in an append-only file across a restart).
Prints figures; not a pass/fail test.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

from testbed.gateway import Bed
from testbed.gatewayfaults import (
    COMPONENTS,
    COUNTED,
    LIMIT,
    Consumers,
    Load,
    count,
    fault_bed,
    kill,
    restart,
    room_in_window,
    steady_load,
    until_exact,
)

OUTCOMES = {0: "no answer", 500: "500", 429: "429"}


def outcome(counts: Counter[int]) -> str:
    return ", ".join(f"{OUTCOMES.get(status, status)} {n}" for status, n in sorted(counts.items())) or "none"


def outage(
    test_bed: Bed, load: Load, component: str, seconds: float, consumers: Consumers
) -> dict[str, float]:
    room_in_window(seconds + 25)  # the over-limit consumers are asked again in the same window
    over_limit = consumers.take()
    count(test_bed, over_limit, LIMIT + 1)
    killed = time.monotonic()
    kill(test_bed, component)
    time.sleep(seconds)  # the outage's length, a parameter of the run
    restart(test_bed, component)
    restarted = time.monotonic()
    exact_at, tried = until_exact(test_bed, consumers)
    samples = load.between(killed, exact_at)
    failed = {
        tier: Counter(s.status for s in samples if s.tier == tier and s.status != 200)
        for tier in ("open", "closed")
    }
    sent = Counter(s.tier for s in samples)
    again = count(test_bed, over_limit, LIMIT + 2).count(200)
    open_failed, closed_failed = failed["open"], failed["closed"]
    print(
        f"{component:9} down {restarted - killed:4.1f}s; exact again {exact_at - restarted:4.1f}s "
        f"after the restart ({len(tried)} counts tried); load failed: fail-open tier "
        f"{sum(open_failed.values())}/{sent['open']} ({outcome(open_failed)}), fail-closed tier "
        f"{sum(closed_failed.values())}/{sent['closed']} ({outcome(closed_failed)}); a consumer over "
        f"its limit before the kill admitted {again} more in the same window",
        flush=True,
    )
    return {
        "down": restarted - killed,
        "exact": exact_at - restarted,
        "open": sum(failed["open"].values()),
        "closed": sum(failed["closed"].values()),
        "again": again,
    }


def main() -> None:
    options = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    options.add_argument("--rounds", type=int, default=3)
    options.add_argument("--outage", type=float, default=5.0)
    options.add_argument("--rate", type=float, default=10.0)
    arguments = options.parse_args()
    results: dict[str, list[dict[str, float]]] = {component: [] for component in COMPONENTS}
    with tempfile.TemporaryDirectory() as workdir, fault_bed(Path(workdir)) as test_bed:
        consumers = Consumers(COUNTED)
        with steady_load(test_bed, arguments.rate) as load:
            for _ in range(arguments.rounds):
                for component in COMPONENTS:
                    results[component].append(outage(test_bed, load, component, arguments.outage, consumers))
    print(
        f"\n{arguments.rounds} rounds, outage {arguments.outage:.0f}s, "
        f"load {4 * arguments.rate:.0f} req/s (medians):"
    )
    for component, found in results.items():
        median = {name: statistics.median(item[name] for item in found) for name in found[0]}
        print(
            f"  {component:9} exact again {median['exact']:.1f}s after the restart; failed requests: "
            f"fail-open {median['open']:.0f}, fail-closed {median['closed']:.0f}; admitted again over a "
            f"limit of {LIMIT}: {median['again']:.0f}"
        )


if __name__ == "__main__":
    main()
