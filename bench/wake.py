#!/usr/bin/env python3
"""Scale from zero on the real local control plane and data path (hack/testbed/wake.py).

    .venv/bin/python bench/wake.py [--wakes 3] [--held 2]

A model with minReplicas 0 behind the gateway: its HPA (the real kube-controller-manager, syncing every 5 s
in the test bed; 15 s is a cluster's default), prometheus-adapter on Tollway's rules and Prometheus
(scraping every second). Each wake: the model is left idle until its HPA has scaled it to zero, then HELD
requests are sent at once; the gateway holds them, counts them, and the HPA wakes the model on that count.
Prints, per wake and as medians, the time from the first request to the first answer and its parts: until
the HPA scaled the Deployment up, until the pod was ready (kwok's pods: at once), the model's load (the test
bed's Triton, started when the pod is ready, until it says it is ready), and the wake without the model's
load, which is what Tollway and the control plane add. Prints figures; it is not a pass/fail test.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
from pathlib import Path

from testbed.kube import Cluster
from testbed.wake import Wake, at_zero, bed, wake

ROOT = Path(__file__).resolve().parent.parent
NAMESPACE = "bench-wake"


def main() -> int:
    options = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    options.add_argument("--wakes", type=int, default=3)
    options.add_argument("--held", type=int, default=2, help="requests sent at once to the sleeping model")
    arguments = options.parse_args()
    up = subprocess.run(
        [str(ROOT / "hack" / "controlplane"), "up"], check=True, stdout=subprocess.PIPE, text=True
    )
    cluster = Cluster(Path(up.stdout.strip().split("=", 1)[1]))
    cluster.install_crds()
    cluster.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true")
    found: list[Wake] = []
    columns = ("wake", "to zero s", "HPA up s", "pod s", "load s", "answer s", "less load s")
    print(" ".join(f"{column:>{max(len(column), 6)}}" for column in columns))
    with tempfile.TemporaryDirectory() as workdir, bed(cluster, Path(workdir), NAMESPACE) as test_bed:
        for index in range(arguments.wakes):
            idle = at_zero(test_bed)
            timings, replies, _, _ = wake(test_bed, arguments.held)
            statuses = sorted({reply.status for reply in replies})
            assert statuses == [200], f"the held requests were answered {statuses}"
            found.append(timings)
            figures = (idle, timings.scaled, timings.pod_ready, timings.model_load, timings.first_answer)
            row = [f"{index + 1:>6}"]
            row += [f"{value:>{len(column)}.1f}" for column, value in zip(columns[1:], figures, strict=False)]
            row.append(f"{timings.without_model_load:>{len(columns[-1])}.1f}")
            print(" ".join(row))

    def median(field: str) -> float:
        return float(statistics.median(getattr(timings, field) for timings in found))

    print(
        f"median of {len(found)}: first request to first answer {median('first_answer'):.1f} s, of which the"
        f" model's load {median('model_load'):.1f} s; without it {median('without_model_load'):.1f} s"
        f" (HPA scaled up at {median('scaled'):.1f} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
