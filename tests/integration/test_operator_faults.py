"""The operator SIGKILLed at random points while its resources are created, edited and deleted: after each
restart it converges, with no child missing, stale, orphaned or duplicated (judged against the translation
core, testbed.operatorfaults). bench/operator_kill.py runs the same driver with 50 kills, for figures."""

from __future__ import annotations

import os
from pathlib import Path

from testbed.kube import Cluster
from testbed.operatorfaults import kill_rounds

NAMESPACE = f"operator-faults-{os.getpid()}"
KILLS = int(os.environ.get("OPERATOR_FAULT_KILLS", "5"))
SEED = int(os.environ.get("OPERATOR_FAULT_SEED", "20260512"))


def test_the_operator_converges_after_every_sigkill(cluster: Cluster, tmp_path: Path) -> None:
    run = kill_rounds(cluster, NAMESPACE, tmp_path, kills=KILLS, seed=SEED, resync_seconds=2.0)
    print(run.summary())
    assert len(run.rounds) == KILLS  # each round converged (kill_rounds fails loudly with the divergence)
