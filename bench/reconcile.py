#!/usr/bin/env python3
"""Reconcile benchmark on the real local control plane.

    .venv/bin/python bench/reconcile.py [--count 100]

Creates COUNT ModelDeployments at once and measures, for each, the time from the apply to all five of its
children (ServiceAccount, ConfigMap, Deployment, Service, PDB) being present; then lets the operator resync
every object a few times and counts the objects whose resourceVersion changed (API writes per no-op
resync, which must be 0); and reports the operator's peak RSS (VmHWM) over the run. Prints figures;
it is not a pass/fail test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from kubernetes import client, config

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
NAMESPACE = "bench"
RESYNC_SECONDS = 5
CHILD_KINDS = ("serviceaccounts", "configmaps", "deployments", "services", "poddisruptionbudgets")


def model_deployment(index: int) -> dict[str, Any]:
    return {
        "apiVersion": "tollway.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": f"model-{index:03d}", "namespace": NAMESPACE},
        "spec": {
            "model": {
                "repository": f"s3://models/model-{index:03d}",
                "backend": "onnxruntime",
                "maxBatchSize": 8,
            },
            "versions": [{"version": "2"}, {"version": "1"}],
            "aliases": {"latest": "2"},
            "autoscaling": {"minReplicas": 1, "maxReplicas": 4},
        },
    }


def children() -> dict[str, list[Any]]:
    """Kind → Tollway's children of that kind in the benchmark namespace."""
    core, apps, policy = client.CoreV1Api(), client.AppsV1Api(), client.PolicyV1Api()
    listings = {
        "serviceaccounts": core.list_namespaced_service_account,
        "configmaps": core.list_namespaced_config_map,
        "deployments": apps.list_namespaced_deployment,
        "services": core.list_namespaced_service,
        "poddisruptionbudgets": policy.list_namespaced_pod_disruption_budget,
    }
    selector = "app.kubernetes.io/managed-by=tollway"
    return {kind: listing(NAMESPACE, label_selector=selector).items for kind, listing in listings.items()}


def children_by_model() -> dict[str, set[str]]:
    """Model name → the kinds of its children that exist now."""
    found: dict[str, set[str]] = {}
    for kind, items in children().items():
        for item in items:
            found.setdefault(item.metadata.labels["tollway.dev/model"], set()).add(kind)
    return found


def tollway_writes() -> dict[str, tuple[str, ...]]:
    """Per object, the times of Tollway's own entries in managedFields.

    Server-side apply stamps the field manager's entry whenever its apply changes the object, so an
    unchanged stamp means Tollway wrote nothing there. resourceVersions alone would also count the
    Deployment controller's status updates, which are not Tollway's writes.
    """
    stamps: dict[str, tuple[str, ...]] = {}
    objects = client.CustomObjectsApi().list_namespaced_custom_object(
        "tollway.dev", "v1alpha1", NAMESPACE, "modeldeployments"
    )
    for item in objects["items"]:
        entries = item["metadata"].get("managedFields") or []
        stamps[f"md/{item['metadata']['name']}"] = tuple(
            f"{entry.get('subresource', '')}@{entry.get('time')}"
            for entry in entries
            if entry["manager"] == "tollway"
        )
    for kind, items in children().items():
        for item in items:
            entries = item.metadata.managed_fields or []
            stamps[f"{kind}/{item.metadata.name}"] = tuple(
                str(entry.time) for entry in entries if entry.manager == "tollway"
            )
    return stamps


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    options = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    options.add_argument("--count", type=int, default=100)
    count = options.parse_args().count

    up = subprocess.run(
        [str(ROOT / "hack" / "controlplane"), "up"], check=True, stdout=subprocess.PIPE, text=True
    )
    kubeconfig = up.stdout.strip().split("=", 1)[1]
    config.load_kube_config(kubeconfig)
    kubectl = [str(BIN / "kubectl"), "--kubeconfig", kubeconfig]
    subprocess.run(
        [*kubectl, "apply", "--server-side", "-f", str(ROOT / "crds")], check=True, capture_output=True
    )
    subprocess.run(
        [*kubectl, "delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true"],
        check=True,
        capture_output=True,
    )
    subprocess.run([*kubectl, "create", "namespace", NAMESPACE], check=True, capture_output=True)

    log = open(ROOT / ".local" / "bench-operator.log", "w")  # noqa: SIM115 (open for the operator's lifetime)
    operator = subprocess.Popen(
        [
            str(BIN / "tollway"),
            "run",
            "--namespace",
            NAMESPACE,
            "--resync-seconds",
            str(RESYNC_SECONDS),
            "--liveness",
            "",
            "--triton-address",
            "127.0.0.1:9",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "KUBECONFIG": kubeconfig},
    )
    try:
        time.sleep(3)  # the operator lists and starts its watches
        manifests = "\n---\n".join(json.dumps(model_deployment(index)) for index in range(count))
        started = time.monotonic()
        subprocess.run(
            [*kubectl, "apply", "-f", "-"], input=manifests, text=True, check=True, capture_output=True
        )
        applied = time.monotonic() - started
        done: dict[str, float] = {}
        while len(done) < count and time.monotonic() - started < 600:
            now = time.monotonic() - started
            for model, kinds in children_by_model().items():
                if model not in done and len(kinds) == len(CHILD_KINDS):
                    done[model] = now
            time.sleep(0.2)
        latencies = sorted(done.values())
        print(f"ModelDeployments: {count}, created by one kubectl apply in {applied:.2f}s")
        print(f"children present for {len(done)}/{count}")
        median, p99 = statistics.median(latencies), latencies[max(0, int(len(latencies) * 0.99) - 1)]
        print(f"reconcile latency (apply → all 5 children present): median {median:.2f}s, P99 {p99:.2f}s")

        # The Deployment controller works through 100 new Deployments; their status changes are real changes
        # that Tollway reports. Measure the no-op resync once it is done and the statuses have caught up.
        while not all(
            (item.status.observed_generation or 0) == item.metadata.generation
            and (item.status.updated_replicas or 0) == item.spec.replicas
            for item in client.AppsV1Api().list_namespaced_deployment(NAMESPACE).items
        ):
            time.sleep(1)
        time.sleep(2 * RESYNC_SECONDS)
        before = tollway_writes()
        resyncs = 3
        time.sleep(resyncs * RESYNC_SECONDS + 1)
        after = tollway_writes()
        changed = sorted(key for key in before if after.get(key) != before[key])
        print(f"objects watched for writes: {len(before)} over {resyncs} resyncs of every ModelDeployment")
        print(f"Tollway's API writes per no-op resync: {len(changed) / resyncs:.1f} (written: {changed[:5]})")
        print(f"operator peak RSS: {peak_rss_mib(operator.pid):.0f} MiB")
    finally:
        operator.terminate()
        operator.wait(timeout=30)
        subprocess.run(
            [*kubectl, "delete", "namespace", NAMESPACE, "--wait=false"], check=False, capture_output=True
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
