"""`tollway run` against the real control plane: conditions appear, follow the generation, and settle."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from builders import api_tier, model_deployment
from kube import Cluster, eventually

NAMESPACE = "operator-test"
RESYNC_SECONDS = 1


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Operator:
    def __init__(self, log: Path, liveness: str) -> None:
        self.log, self.liveness = log, liveness

    def log_lines(self) -> list[str]:
        return self.log.read_text().splitlines()


@pytest.fixture(scope="module")
def operator(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    cluster.namespace(NAMESPACE)
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    liveness = f"http://127.0.0.1:{free_port()}/healthz"
    command = [
        str(Path(sys.executable).parent / "tollway"),
        "run",
        "--namespace",
        NAMESPACE,
        "--resync-seconds",
        str(RESYNC_SECONDS),
        "--liveness",
        liveness,
    ]
    with log.open("w") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)},
        )
    yield Operator(log, liveness)
    process.terminate()
    process.wait(timeout=30)


def conditions(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["type"]: item for item in (document.get("status") or {}).get("conditions", [])}


def settled(cluster: Cluster, kind: str, name: str) -> dict[str, Any] | None:
    """The object once its status describes its current generation, else None."""
    document = cluster.get(kind, name, NAMESPACE)
    generation = document["metadata"]["generation"]
    found = conditions(document)
    ready = found.get("Ready")
    done = (
        ready
        and ready["observedGeneration"] == generation
        and document["status"]["observedGeneration"] == generation
    )
    return document if done else None


def test_conditions_appear_with_the_observed_generation(cluster: Cluster, operator: Operator) -> None:
    cluster.apply(model_deployment("chat", **{"metadata.namespace": NAMESPACE}))
    cluster.apply(api_tier("pro", **{"metadata.namespace": NAMESPACE}))
    model = eventually(lambda: settled(cluster, "md", "chat"))
    assert {kind: item["status"] for kind, item in conditions(model).items()} == {
        "Ready": "False",
        "Progressing": "False",
        "Degraded": "False",
    }
    assert conditions(model)["Ready"]["reason"] == "NotImplemented"
    tier = eventually(lambda: settled(cluster, "tier", "pro"))
    assert conditions(tier)["Ready"]["observedGeneration"] == 1


def test_a_spec_change_is_observed_without_moving_transition_times(
    cluster: Cluster, operator: Operator
) -> None:
    cluster.apply(model_deployment("rolling", **{"metadata.namespace": NAMESPACE}))
    before = eventually(lambda: settled(cluster, "md", "rolling"))
    cluster.kubectl(
        "patch",
        "md",
        "rolling",
        "-n",
        NAMESPACE,
        "--type",
        "merge",
        "-p",
        '{"spec": {"triton": {"gpus": 2}}}',
    )
    after = eventually(lambda: settled(cluster, "md", "rolling"))
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1
    ready_before, ready_after = conditions(before)["Ready"], conditions(after)["Ready"]
    assert ready_after["lastTransitionTime"] == ready_before["lastTransitionTime"]
    assert ready_after["observedGeneration"] == after["metadata"]["generation"]


def test_a_settled_resource_gets_zero_writes_across_resyncs(cluster: Cluster, operator: Operator) -> None:
    cluster.apply(model_deployment("steady", **{"metadata.namespace": NAMESPACE}))
    eventually(lambda: settled(cluster, "md", "steady"))
    time.sleep(RESYNC_SECONDS * 2)  # let the finalizer and first status land
    version = cluster.get("md", "steady", NAMESPACE)["metadata"]["resourceVersion"]
    time.sleep(RESYNC_SECONDS * 5)  # five resyncs and their reconciles
    assert cluster.get("md", "steady", NAMESPACE)["metadata"]["resourceVersion"] == version


def test_condition_changes_are_recorded_as_events(cluster: Cluster, operator: Operator) -> None:
    cluster.apply(model_deployment("announced", **{"metadata.namespace": NAMESPACE}))

    def events() -> list[dict[str, Any]] | None:
        listing = json.loads(
            cluster.kubectl("get", "events.events.k8s.io", "-n", NAMESPACE, "-o", "json").stdout
        )
        found = [item for item in listing["items"] if item["regarding"]["name"] == "announced"]
        return found if len(found) >= 2 else None

    found = eventually(events)
    assert {(item["type"], item["reason"]) for item in found} == {
        ("Normal", "NotImplemented"),
        ("Normal", "AsExpected"),
    }
    assert all(item["reportingController"] == "tollway.dev/operator" for item in found)


def test_a_deleted_resource_goes_away(cluster: Cluster, operator: Operator) -> None:
    cluster.apply(model_deployment("doomed", **{"metadata.namespace": NAMESPACE}))
    eventually(lambda: settled(cluster, "md", "doomed"))
    cluster.kubectl("delete", "md", "doomed", "-n", NAMESPACE, "--timeout", "30s")
    gone = cluster.kubectl("get", "md", "doomed", "-n", NAMESPACE, check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr


def test_liveness_endpoint_and_json_logs(cluster: Cluster, operator: Operator) -> None:
    def alive() -> bool:
        try:
            with urllib.request.urlopen(operator.liveness, timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    assert eventually(alive)
    lines = operator.log_lines()
    assert lines and all(isinstance(json.loads(line), dict) for line in lines)
