"""Tollway's external metrics served to the real control plane's HPA controller: prometheus-adapter (built
from the Go module proxy) on the rules `tollway adapter-config` prints, registered as
external.metrics.k8s.io with the local kube-apiserver. Shared by the tests that run the real HPA loop."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from testbed import dataplane
from testbed.kube import Cluster
from testbed.processes import free_port

ADAPTER = "tollway-test-prometheus-adapter"


@contextmanager
def external_metrics(cluster: Cluster, workdir: Path, prometheus_url: str) -> Iterator[None]:
    """prometheus-adapter on Prometheus at `prometheus_url`, registered with the API server until the block
    ends (then unregistered first: an APIService whose server is gone breaks discovery for everyone)."""
    rules = workdir / "adapter.yaml"
    tollway = str(Path(sys.executable).parent / "tollway")
    rules.write_text(
        subprocess.run([tollway, "adapter-config"], capture_output=True, text=True, check=True).stdout
    )
    port = free_port()
    adapter = dataplane.prometheus_adapter(workdir, port, cluster.kubeconfig, prometheus_url, rules)
    try:
        register_adapter(cluster, port)
        yield
    finally:
        unregister_adapter(cluster)
        adapter.stop()


def host_address() -> str:
    """A non-loopback address of this machine: the API server refuses loopback endpoints."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("10.254.254.254", 9))  # no packet is sent; this only picks the outgoing interface
        address = str(probe.getsockname()[0])
    assert not address.startswith("127."), "this machine has no non-loopback IPv4 address for the adapter"
    return address


def register_adapter(cluster: Cluster, port: int) -> None:
    """prometheus-adapter as external.metrics.k8s.io, reached by the API server at this machine's address,
    and the HPA controller allowed to read it."""
    documents: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": ADAPTER, "namespace": "kube-system"},
            "spec": {"ports": [{"port": port, "targetPort": port}]},
        },
        {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {"name": ADAPTER, "namespace": "kube-system"},
            "subsets": [{"addresses": [{"ip": host_address()}], "ports": [{"port": port}]}],
        },
        {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": "v1beta1.external.metrics.k8s.io"},
            "spec": {
                "service": {"name": ADAPTER, "namespace": "kube-system", "port": port},
                "group": "external.metrics.k8s.io",
                "version": "v1beta1",
                "insecureSkipTLSVerify": True,  # the adapter's certificate is self-signed, made at start
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
            },
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": ADAPTER},
            "rules": [
                {"apiGroups": ["external.metrics.k8s.io"], "resources": ["*"], "verbs": ["get", "list"]}
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": ADAPTER},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": ADAPTER},
            "subjects": [
                {"kind": "ServiceAccount", "name": "horizontal-pod-autoscaler", "namespace": "kube-system"}
            ],
        },
    ]
    for document in documents:
        cluster.apply(document)


def unregister_adapter(cluster: Cluster) -> None:
    # An APIService whose server is gone breaks discovery for everyone after: remove it first.
    cluster.kubectl("delete", "apiservice", "v1beta1.external.metrics.k8s.io", "--ignore-not-found")
    cluster.kubectl("delete", "clusterrolebinding,clusterrole", ADAPTER, "--ignore-not-found")
    cluster.kubectl("delete", "service,endpoints", ADAPTER, "-n", "kube-system", "--ignore-not-found")
