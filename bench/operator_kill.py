#!/usr/bin/env python3
"""The operator SIGKILLed at random points, 50 times, while its resources are created, edited and deleted:

    .venv/bin/python bench/operator_kill.py [--kills 50] [--seed 7] [--resync-seconds 60]

Each round changes a few ModelDeployments, ApiTiers and API-key Secrets while the operator is away, starts
it with more changes running beside it, SIGKILLs it at a random moment of its first six seconds (its
start, its first listing, or its reconciles), starts it again and measures the time until the children in
the API server are exactly what the translation core renders for the resources there (none missing, stale,
orphaned or duplicated) and every status describes its generation (testbed.operatorfaults). The resync
defaults to the operator's own (60 s), so a restart must converge from its listing and watches, not from a
resync. Prints figures; a round that does not converge within two minutes ends the run with its
divergence and the operator's log (exit 1). Starts the local control plane if it is not up (and leaves it
up, as bench/reconcile.py does).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from testbed.kube import Cluster
from testbed.operatorfaults import Round, kill_rounds

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    options = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    options.add_argument("--kills", type=int, default=50)
    options.add_argument("--seed", type=int, default=7)
    options.add_argument("--resync-seconds", type=float, default=60.0)
    arguments = options.parse_args()

    up = subprocess.run(
        [str(ROOT / "hack" / "controlplane"), "up"], check=True, stdout=subprocess.PIPE, text=True
    )
    cluster = Cluster(Path(up.stdout.strip().split("=", 1)[1]))
    cluster.install_crds()
    namespace = f"bench-kill-{os.getpid()}"

    def progress(index: int, found: Round) -> None:
        print(
            f"kill {index + 1:2d} at {found.killed_after:4.1f}s, {len(found.changes)} changes: "
            f"converged {found.converged_after:5.1f}s after the restart",
            flush=True,
        )

    try:
        with tempfile.TemporaryDirectory(prefix="operator-kill-") as workdir:
            run = kill_rounds(
                cluster,
                namespace,
                Path(workdir),
                kills=arguments.kills,
                seed=arguments.seed,
                resync_seconds=arguments.resync_seconds,
                progress=progress,
            )
    except AssertionError as failed:
        print(f"FAILED: {failed}")
        return 1
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    print(run.summary())
    print("after each convergence: missing 0, stale 0, orphaned 0, duplicated 0 (else the run had failed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
