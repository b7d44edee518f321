"""The test bed itself: RBAC is enforced, a ServiceAccount identity works, controllers run (the scheduler and
the simulated nodes: tests/integration/test_nodes.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from testbed.controlplane import PROCESSES
from testbed.kube import Cluster, eventually

ROOT = Path(__file__).resolve().parents[2]


def test_a_service_account_is_bound_by_rbac(cluster: Cluster) -> None:
    made = subprocess.run(
        [str(ROOT / "hack" / "controlplane"), "kubeconfig-for", "rbac-test/reader"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    reader = Cluster(Path(made.stdout.strip()))
    assert reader.kubectl("auth", "whoami", "-o", "json").stdout.count(
        "system:serviceaccount:rbac-test:reader"
    )
    denied = reader.kubectl("get", "configmaps", "-n", "rbac-test", check=False)
    assert denied.returncode != 0 and "Forbidden" in denied.stderr
    cluster.kubectl(
        "create", "role", "read-configmaps", "-n", "rbac-test", "--verb=list", "--resource=configmaps"
    )
    cluster.kubectl(
        "create",
        "rolebinding",
        "reader",
        "-n",
        "rbac-test",
        "--role=read-configmaps",
        "--serviceaccount=rbac-test:reader",
    )
    eventually(lambda: reader.kubectl("get", "configmaps", "-n", "rbac-test", check=False).returncode == 0)


def test_the_garbage_collector_removes_owned_objects(cluster: Cluster) -> None:
    namespace = cluster.namespace("gc-test")
    cluster.apply(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner", "namespace": namespace}}
    )
    uid = cluster.get("configmap", "owner", namespace)["metadata"]["uid"]
    owner = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}
    owned = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "owned", "namespace": namespace, "ownerReferences": [owner]},
    }
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(owned))
    cluster.kubectl("delete", "configmap", "owner", "-n", namespace)
    eventually(
        lambda: cluster.kubectl("get", "configmap", "owned", "-n", namespace, check=False).returncode != 0
    )


def test_up_again_reuses_the_running_control_plane(cluster: Cluster) -> None:
    state = ROOT / ".local" / "controlplane"
    pids = {path.name: path.read_text() for path in state.glob("*.pid")}
    controlplane = str(ROOT / "hack" / "controlplane")
    again = subprocess.run([controlplane, "up"], capture_output=True, text=True, timeout=120, check=False)
    assert again.returncode == 0, again.stderr
    assert "starting" not in again.stderr
    assert {path.name: path.read_text() for path in state.glob("*.pid")} == pids
    assert set(pids) == {f"{name}.pid" for name in PROCESSES}
    assert PROCESSES == ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
