#!/usr/bin/env python3
"""Tollway's main job on the local default: a real control plane, the operator, the examples, a report.

    make demo                 # or: .venv/bin/python hack/demo.py [--keep]

Starts the local control plane (hack/controlplane), installs the CRDs, runs `tollway run`, applies
examples/, waits until the operator has reconciled every resource, and prints what a platform engineer
would look at. Exits 0 when every resource reports on its current generation, non-zero with the reason
otherwise. Leaves nothing running unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
NAMESPACE = "ai"
TIMEOUT = 90.0


def step(message: str) -> None:
    print(f"==> {message}", flush=True)


def kubectl(kubeconfig: str, *args: str) -> str:
    return subprocess.run(
        [str(BIN / "kubectl"), "--kubeconfig", kubeconfig, *args], check=True, capture_output=True, text=True
    ).stdout


def unsettled(kubeconfig: str) -> list[str]:
    """Resources whose status does not yet describe their current generation."""
    listing = json.loads(kubectl(kubeconfig, "get", "md,tier", "-n", NAMESPACE, "-o", "json"))
    waiting = []
    for item in listing["items"]:
        status: dict[str, Any] = item.get("status") or {}
        if status.get("observedGeneration") != item["metadata"]["generation"]:
            waiting.append(f"{item['kind']}/{item['metadata']['name']}")
    return waiting


def report(kubeconfig: str) -> None:
    print(kubectl(kubeconfig, "get", "md,tier", "-n", NAMESPACE))
    print(
        kubectl(
            kubeconfig,
            "get",
            "deploy,svc,cm,pdb,sa",
            "-n",
            NAMESPACE,
            "-l",
            "app.kubernetes.io/managed-by=tollway",
        )
    )
    listing = json.loads(kubectl(kubeconfig, "get", "md,tier", "-n", NAMESPACE, "-o", "json"))
    for item in listing["items"]:
        print(f"{item['kind']}/{item['metadata']['name']} (generation {item['metadata']['generation']}):")
        for condition in item["status"]["conditions"]:
            message = f": {condition['message']}" if condition["message"] else ""
            print(f"  {condition['type']:<12} {condition['status']:<6} {condition['reason']}{message}")
    print()
    print("Each ModelDeployment got its Triton stack; its pods stay Pending (the local control plane has no")
    print("kubelet). Not shown yet: the Envoy gateway, traffic and usage figures (see README).")


def main() -> int:
    options = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    options.add_argument("--keep", action="store_true", help="leave the control plane and operator running")
    keep = options.parse_args().keep
    began = time.monotonic()

    step("starting the local control plane (the first run builds Kubernetes from source: minutes)")
    controlplane = str(ROOT / "hack" / "controlplane")
    up = subprocess.run([controlplane, "up"], check=True, stdout=subprocess.PIPE, text=True)
    kubeconfig = up.stdout.strip().split("=", 1)[1]
    operator = None
    try:
        step("installing the CRDs")
        kubectl(kubeconfig, "apply", "--server-side", "-f", str(ROOT / "crds"))
        kubectl(kubeconfig, "wait", "--for", "condition=Established", "-f", str(ROOT / "crds"))
        step("starting the operator (tollway run); its JSON log goes to .local/operator.log")
        log = (ROOT / ".local" / "operator.log").open("w")
        operator = subprocess.Popen(
            [
                str(BIN / "tollway"),
                "run",
                "--resync-seconds",
                "10",
                "--liveness",
                "",
                "--triton-address",
                "127.0.0.1:9",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "KUBECONFIG": kubeconfig},
        )
        step("applying examples/")
        kubectl(kubeconfig, "apply", "-f", str(ROOT / "examples"))
        step("waiting for the operator to reconcile every resource")
        deadline = time.monotonic() + TIMEOUT
        while (waiting := unsettled(kubeconfig)) and time.monotonic() < deadline:
            time.sleep(1)
        if waiting:
            late = ", ".join(waiting)
            print(f"FAILED: not reconciled after {TIMEOUT:.0f}s: {late} (see .local/operator.log)")
            return 1
        step(f"done in {time.monotonic() - began:.1f}s")
        report(kubeconfig)
        if keep:
            print(f"\nLeft running: export KUBECONFIG={kubeconfig}")
            print(f"Stop with: kill {operator.pid}; make down")
            operator = None
        return 0
    finally:
        if operator is not None:
            operator.terminate()
            operator.wait(timeout=30)
        if not keep:
            subprocess.run([controlplane, "down"], check=False)


if __name__ == "__main__":
    sys.exit(main())
