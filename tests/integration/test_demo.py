"""The README's first command, end to end: `hack/demo.py` on its own control plane (other ports and state than
the test session's), with the real operator and data path. It must exit 0 and print the report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Ports of the demo's own control plane (etcd takes the next one too); not the session cluster's.
OWN_CONTROL_PLANE = {
    "TOLLWAY_APISERVER_PORT": "18443",
    "TOLLWAY_ETCD_PORT": "14379",
    "TOLLWAY_KCM_PORT": "20457",
    "TOLLWAY_SCHEDULER_PORT": "20459",
    "TOLLWAY_KWOK_PORT": "20450",
}


def test_the_demo_sends_traffic_through_the_gateway_and_reports_it(tmp_path: Path) -> None:
    env = {**os.environ, **OWN_CONTROL_PLANE, "TOLLWAY_CONTROLPLANE_DIR": str(tmp_path / "controlplane")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "demo.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    report = done.stdout
    assert done.returncode == 0, f"demo failed:\n{report[-6000:]}\n{done.stderr[-4000:]}"
    rows = {line.split()[0]: line.split() for line in report.splitlines() if line.startswith("  ")}
    # consumer, tier, sent, allowed, limited: free's 26 requests meet its 20 per minute across two replicas
    assert rows["alice"][:5] == ["alice", "free", "26", "20", "6"]
    assert rows["bob"][:5] == ["bob", "pro", "30", "30", "0"]
    assert rows["carol"][:5] == ["carol", "enterprise", "30", "30", "0"]
    assert "x-ratelimit-remaining: 0" in report
    assert "sunset: Fri, 15 Jan 2027 00:00:00 GMT" in report
    assert "requests and tokens per consumer equal what the clients received" in report
    # the question asked twice: the second answer came from the model's shared answer cache, unchanged
    assert "the model's answer cache said hit (the first time: miss)" in report
    assert "the same text: True" in report
    assert "modeldeployment.tollway.dev/chat" in report and "apitier.tollway.dev/pro" in report
    # chat's pod runs on a simulated GPU node (its nodeSelector names the nodes' GPU) and Triton serves it
    ready = {
        line.split()[0]: line.split()[1] for line in report.splitlines() if line.startswith("modeldeployment")
    }
    assert ready["modeldeployment.tollway.dev/chat"] == "True", report[-3000:]
    assert "Everything behaved as configured" in report
    left_up = (tmp_path / "controlplane" / "kube-apiserver.pid").exists()
    assert not left_up, "the demo left its control plane up"
