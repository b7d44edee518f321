"""A cluster as its user sees it through kubectl, and the operator (`tollway run`) as a subprocess: for the
integration tests and the demo, on the local control plane (testbed.controlplane)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from testbed.processes import ROOT, Process, free_port, poll

T = TypeVar("T")
KUBECTL = str(Path(sys.executable).parent / "kubectl")
CRDS = ROOT / "crds"


@dataclass(frozen=True)
class Cluster:
    kubeconfig: Path

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [KUBECTL, "--kubeconfig", str(self.kubeconfig), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {done.stderr}")
        return done

    def get(self, kind: str, name: str, namespace: str) -> dict[str, Any]:
        return dict(json.loads(self.kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout))

    def items(self, kinds: str, namespace: str) -> list[dict[str, Any]]:
        """The objects of `kinds` (kubectl's comma-separated list) in `namespace`."""
        listed = json.loads(self.kubectl("get", kinds, "-n", namespace, "-o", "json").stdout)
        return list(listed["items"])

    def install_crds(self) -> None:
        """Tollway's CRDs from crds/, applied and established."""
        self.kubectl("apply", "--server-side", "--field-manager", "tollway-tests", "-f", str(CRDS))
        self.kubectl("wait", "--for", "condition=Established", "--timeout", "60s", "-f", str(CRDS))

    def apply(self, manifest: dict[str, Any] | str) -> None:
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        self.kubectl("apply", "-f", "-", stdin=text)

    def apply_server_side(self, manifest: dict[str, Any]) -> None:
        self.kubectl(
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager",
            "tollway-tests",
            "-f",
            "-",
            stdin=json.dumps(manifest),
        )

    def patch(self, kind: str, name: str, namespace: str, merge: dict[str, Any]) -> None:
        self.kubectl("patch", kind, name, "-n", namespace, "--type", "merge", "-p", json.dumps(merge))

    def namespace(self, name: str) -> str:
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        return name


def eventually(probe: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.5) -> T:
    """The first truthy value `probe` returns, or AssertionError with the last value after `timeout`."""
    found = poll(probe, timeout, interval)
    if not found:
        raise AssertionError(f"condition not met after {timeout}s; last value: {found!r}")
    return found


@dataclass(frozen=True, eq=False)  # one running operator is equal to itself only (tests key dicts by it)
class Operator:
    log: Path
    liveness: str
    process: Process
    """The `tollway run` subprocess (its `kill()` is a SIGKILL)."""

    def log_lines(self) -> list[str]:
        return self.log.read_text().splitlines()


@contextmanager
def operator(cluster: Cluster, namespace: str, workdir: Path, *args: str) -> Iterator[Operator]:
    """`tollway run` watching `namespace`, resyncing every second, as a subprocess of the test."""
    cluster.namespace(namespace)
    with tollway_run(
        cluster.kubeconfig, workdir, "--namespace", namespace, "--resync-seconds", "1", *args
    ) as running:
        yield running


@contextmanager
def tollway_run(kubeconfig: Path, workdir: Path, *args: str) -> Iterator[Operator]:
    """`tollway run ARGS` as a subprocess of the test, acting as `kubeconfig`'s user, with its liveness
    endpoint on a free port and its log in `workdir`."""
    log = workdir / "operator.log"
    liveness = f"http://127.0.0.1:{free_port()}/healthz"
    command = [str(Path(sys.executable).parent / "tollway"), "run", *args, "--liveness", liveness]
    with log.open("w") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "KUBECONFIG": str(kubeconfig)}
        )
    running = Process("tollway run", process, log)
    try:
        yield Operator(log, liveness, running)
    finally:
        running.stop()  # SIGTERM, then SIGKILL after a grace period, as the kubelet stops a pod
