"""Pods that run, on nodes with GPUs: kube-scheduler places pods on the control plane's simulated nodes (kwok
plays their kubelets: Running and Ready as far as the API can tell, no process runs), so a ModelDeployment
becomes Ready with its replicas available, and one that asks for more GPUs than a node has says why not.

Triton itself runs beside the control plane (PyTriton's tritonserver, on CPU: a stand-in of the same name
and versions), and the operator is told to reach it there, as it would reach the Service in a cluster.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from tollway.api import ModelDeployment
from tollway.api.parse import parse
from tollway.translate.serving import plan_serving

from builders import model_deployment
from testbed.kube import Cluster, eventually, operator
from testbed.nodes import GPUS_PER_NODE, NODE_PREFIX, NODES
from testbed.triton import RunningTriton, running

NAMESPACE = f"nodes-test-{os.getpid()}"  # fresh on every run, also against a control plane left up
GPU = "nvidia.com/gpu"
#: Generous: the operator, the scheduler and kwok share two loaded cores with the tests.
SETTLE_SECONDS = 180


def chat(**changes: Any) -> dict[str, Any]:
    """The builders' model `chat` (versions 2 and 1) on one GPU a replica, two replicas, no autoscaling."""
    spec = {
        "metadata.namespace": NAMESPACE,
        "spec.triton.gpus": 1,
        "spec.autoscaling": {"minReplicas": 2, "maxReplicas": 2},
    }
    return model_deployment("chat", **{**spec, **changes})


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningTriton]:
    """Triton serving `chat`'s versions on CPU: the GPU model's stand-in, with the config Tollway renders."""
    stand_in = plan_serving(parse(ModelDeployment, chat(**{"spec.triton.gpus": 0})), (), "unused")
    with running(tmp_path_factory.mktemp("triton"), stand_in) as server:
        yield server


@pytest.fixture(scope="module")
def deployed(
    cluster: Cluster, triton: RunningTriton, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    with operator(cluster, NAMESPACE, tmp_path_factory.mktemp("operator"), "--triton-address", triton.http):
        yield
    cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false")  # the GPUs go back to the session


def conditions(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["type"]: item for item in (document.get("status") or {}).get("conditions", [])}


def with_condition(cluster: Cluster, name: str, kind: str, status: str) -> dict[str, Any] | None:
    """The ModelDeployment once its `kind` condition has `status` for its current generation, else None."""
    document = cluster.get("md", name, NAMESPACE)
    found = conditions(document).get(kind)
    current = found and found["observedGeneration"] == document["metadata"]["generation"]
    return document if current and found["status"] == status else None


def pods(cluster: Cluster, model: str) -> list[dict[str, Any]]:
    listing = cluster.kubectl(
        "get", "pods", "-n", NAMESPACE, "-l", f"tollway.dev/model={model}", "-o", "json"
    )
    return list(json.loads(listing.stdout)["items"])


def pod_conditions(pod: dict[str, Any]) -> dict[str, str]:
    return {item["type"]: item["status"] for item in pod["status"].get("conditions", [])}


def test_the_simulated_nodes_are_ready_with_their_gpus(cluster: Cluster) -> None:
    nodes = [item for item in cluster.items("nodes", "") if item["metadata"]["name"].startswith(NODE_PREFIX)]
    assert len(nodes) == NODES
    for node in nodes:
        assert node["status"]["allocatable"][GPU] == str(GPUS_PER_NODE)
        assert {item["type"]: item["status"] for item in node["status"]["conditions"]}["Ready"] == "True"
        assert not [taint for taint in node["spec"].get("taints", []) if "not-ready" in taint["key"]]


def test_the_nodes_heartbeat_through_their_leases(cluster: Cluster) -> None:
    """kwok renews each node's lease every few seconds, so the node controller keeps the nodes Ready."""
    name = f"{NODE_PREFIX}0"
    before = cluster.get("lease", name, "kube-node-lease")["spec"]["renewTime"]
    renewed = eventually(
        lambda: (
            (cluster.get("lease", name, "kube-node-lease")["spec"]["renewTime"] != before)
            and cluster.get("lease", name, "kube-node-lease")
        ),
        timeout=60,
    )
    renew = datetime.fromisoformat(renewed["spec"]["renewTime"].replace("Z", "+00:00"))
    assert (datetime.now(UTC) - renew).total_seconds() < 60


def test_a_model_deployment_on_gpu_nodes_becomes_ready_with_its_replicas(
    cluster: Cluster, deployed: None
) -> None:
    cluster.apply(chat())
    model = eventually(lambda: with_condition(cluster, "chat", "Ready", "True"), timeout=SETTLE_SECONDS)
    ready = conditions(model)["Ready"]
    assert (ready["reason"], ready["message"]) == ("Serving", "2 replicas serve every listed version")
    assert model["status"]["replicas"] == 2 and model["status"]["readyReplicas"] == 2
    assert conditions(model)["Degraded"]["status"] == "False"
    assert [item["state"] for item in model["status"]["versions"]] == ["Ready", "Ready"]
    found = [pod for pod in pods(cluster, "chat") if not pod["metadata"].get("deletionTimestamp")]
    assert len(found) == 2
    for pod in found:
        assert pod["spec"]["nodeName"].startswith(NODE_PREFIX)
        assert pod["status"]["phase"] == "Running" and pod["status"]["podIP"]
        assert pod_conditions(pod) | {"PodScheduled": "True", "Ready": "True"} == pod_conditions(pod)
        triton = next(item for item in pod["spec"]["containers"] if item["name"] == "triton")
        assert triton["resources"]["limits"][GPU] == "1"


def test_more_gpus_than_a_node_has_degrade_with_the_schedulers_reason(
    cluster: Cluster, deployed: None
) -> None:
    asking = GPUS_PER_NODE + 1
    cluster.apply(
        model_deployment(
            "huge",
            **{
                "metadata.namespace": NAMESPACE,
                "spec.triton.gpus": asking,
                "spec.autoscaling": {"minReplicas": 1, "maxReplicas": 1},
            },
        )
    )
    model = eventually(lambda: with_condition(cluster, "huge", "Degraded", "True"), timeout=SETTLE_SECONDS)
    degraded, ready = conditions(model)["Degraded"], conditions(model)["Ready"]
    assert degraded["reason"] == "Unschedulable"
    assert f"0/{NODES} nodes are available: {NODES} Insufficient {GPU}" in degraded["message"]
    assert degraded["message"].startswith("pod huge-triton-")
    assert (ready["status"], ready["reason"]) == ("False", "DeploymentUnavailable")
    [pod] = pods(cluster, "huge")
    assert "nodeName" not in pod["spec"] and pod["status"]["phase"] == "Pending"


def test_a_deleted_pod_goes_and_its_replacement_runs(cluster: Cluster, deployed: None) -> None:
    """kwok finishes a deleted pod as a kubelet would (without it, it would stay Terminating for ever)."""
    cluster.apply(chat())
    eventually(lambda: with_condition(cluster, "chat", "Ready", "True"), timeout=SETTLE_SECONDS)
    doomed = pods(cluster, "chat")[0]["metadata"]["name"]
    cluster.kubectl("delete", "pod", doomed, "-n", NAMESPACE, "--wait=false")

    def replaced() -> list[dict[str, Any]] | None:
        found = pods(cluster, "chat")
        names = {pod["metadata"]["name"] for pod in found}
        running = [pod for pod in found if pod_conditions(pod).get("Ready") == "True"]
        return found if doomed not in names and len(running) == 2 else None

    eventually(replaced, timeout=SETTLE_SECONDS)
