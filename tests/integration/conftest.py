"""The real local control plane (hack/controlplane), shared by every integration test of the session.

There is no skip here: if etcd, kube-apiserver, kube-controller-manager, kube-scheduler or kwok (the simulated
nodes) cannot start, the tests fail.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.controlplane import ADMIN_KUBECONFIG, STATE
from testbed.kube import Cluster, Operator, operator

CONTROLPLANE = str(Path(__file__).resolve().parents[2] / "hack" / "controlplane")


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """Starts the control plane (or reuses one already up), installs the CRDs; stops it if it started it."""
    already_up = (STATE / "kube-apiserver.pid").exists()
    up = subprocess.run([CONTROLPLANE, "up"], capture_output=True, text=True, timeout=3600, check=False)
    assert up.returncode == 0, f"hack/controlplane up failed:\n{up.stderr}"
    cluster = Cluster(ADMIN_KUBECONFIG)
    cluster.install_crds()
    yield cluster
    if not already_up:
        subprocess.run([CONTROLPLANE, "down"], check=True, timeout=120)


@pytest.fixture(scope="module")
def running_operator(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Operator]:
    """`tollway run` watching the test module's NAMESPACE. No Triton to ask: a closed port answers at once.
    The namespace goes afterwards: its pods would hold the simulated nodes' GPUs for the rest of the
    session."""
    namespace = request.module.NAMESPACE
    with operator(
        cluster, namespace, tmp_path_factory.mktemp("operator"), "--triton-address", "127.0.0.1:9"
    ) as running:
        yield running
    cluster.kubectl("delete", "namespace", namespace, "--wait=false")
