"""A ModelDeployment on the real control plane becomes its Triton stack; status comes from the real Triton.

The test bed's pods are scheduled onto simulated nodes (kwok), which report them running while no process
runs; Triton runs beside it (PyTriton's tritonserver on CPU) and the operator is told to reach it there
(`--triton-address`), as it would reach the Service in a cluster.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tollway.api import ModelDeployment
from tollway.api.parse import parse
from tollway.translate.serving import plan_serving

from builders import model_deployment
from testbed.kube import Cluster, eventually, operator
from testbed.triton import RunningTriton, running

NAMESPACE = f"serving-test-{os.getpid()}"  # fresh on every run, also against a control plane left up
CHILDREN = (
    ("serviceaccount", "echo-triton"),
    ("configmap", "echo-model-config"),
    ("deployment", "echo-triton"),
    ("service", "echo-triton"),
    ("poddisruptionbudget", "echo-triton"),
)


def echo(name: str, model: str, **changes: Any) -> dict[str, Any]:
    spec = {
        "metadata.namespace": NAMESPACE,
        "spec.model.name": model,
        "spec.model.repository": f"pvc://models/{model}",
        "spec.versions": [{"version": "2"}, {"version": "1"}],
        "spec.triton.gpus": 0,
        "spec.autoscaling": {"minReplicas": 1, "maxReplicas": 2},
    }
    return model_deployment(name, **{**spec, **changes})


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningTriton]:
    """Triton serving `echo` (both versions load) and `flaky` (version 2 fails to load)."""
    flaky, good = (
        plan_serving(parse(ModelDeployment, echo(name, name)), (), "unused") for name in ("flaky", "echo")
    )
    with running(tmp_path_factory.mktemp("triton"), flaky, good, broken=[2]) as server:
        yield server


@pytest.fixture(scope="module")
def models_claim(cluster: Cluster) -> Iterator[None]:
    """The claim `pvc://models/…` names, bound to a volume of its own: the scheduler places no pod whose
    claim is missing or unbound (the simulated nodes mount nothing)."""
    volume = f"{NAMESPACE}-models"
    common = {"accessModes": ["ReadOnlyMany"], "storageClassName": ""}
    cluster.namespace(NAMESPACE)
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": volume},
            "spec": {
                **common,
                "capacity": {"storage": "1Gi"},
                "hostPath": {"path": "/models"},
                "claimRef": {"namespace": NAMESPACE, "name": "models"},
            },
        }
    )
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "models", "namespace": NAMESPACE},
            "spec": {**common, "volumeName": volume, "resources": {"requests": {"storage": "1Gi"}}},
        }
    )
    eventually(lambda: cluster.get("pvc", "models", NAMESPACE).get("status", {}).get("phase") == "Bound")
    yield
    cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false")
    cluster.kubectl("delete", "persistentvolume", volume, "--wait=false")


@pytest.fixture(scope="module")
def deployed(
    cluster: Cluster, models_claim: None, triton: RunningTriton, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("operator")
    with operator(cluster, NAMESPACE, workdir, "--triton-address", triton.http):
        cluster.apply(echo("echo", "echo"))
        yield cluster.get("md", "echo", NAMESPACE)["metadata"]["uid"]


def found(cluster: Cluster, kind: str, name: str) -> dict[str, Any] | None:
    done = cluster.kubectl("get", kind, name, "-n", NAMESPACE, "-o", "json", check=False)
    return json.loads(done.stdout) if done.returncode == 0 else None


def labelled(cluster: Cluster, kind: str, model: str) -> list[str]:
    listing = cluster.kubectl("get", kind, "-n", NAMESPACE, "-l", f"tollway.dev/model={model}", "-o", "name")
    return listing.stdout.split()


def image(cluster: Cluster) -> str:
    return str(
        cluster.get("deployment", "echo-triton", NAMESPACE)["spec"]["template"]["spec"]["containers"][0][
            "image"
        ]
    )


def status(cluster: Cluster, name: str) -> dict[str, Any]:
    return dict(cluster.get("md", name, NAMESPACE).get("status") or {})


def condition(cluster: Cluster, name: str, kind: str) -> dict[str, Any]:
    return next((item for item in status(cluster, name).get("conditions", []) if item["type"] == kind), {})


def test_every_child_exists_owned_by_its_model_deployment(cluster: Cluster, deployed: str) -> None:
    for kind, name in CHILDREN:
        child = eventually(
            lambda kind=kind, name=name: (
                cluster.kubectl("get", kind, name, "-n", NAMESPACE, check=False).returncode == 0
                and cluster.get(kind, name, NAMESPACE)
            )
        )
        owners = child["metadata"]["ownerReferences"]
        assert [(owner["kind"], owner["uid"], owner["controller"]) for owner in owners] == [
            ("ModelDeployment", deployed, True)
        ]
        assert child["metadata"]["labels"]["tollway.dev/model"] == "echo"


def test_status_reports_the_versions_triton_serves(cluster: Cluster, deployed: str) -> None:
    eventually(
        lambda: [item["state"] for item in status(cluster, "echo").get("versions", [])] == ["Ready", "Ready"]
    )
    assert condition(cluster, "echo", "Degraded")["status"] == "False"
    # Its pod runs on a simulated node and Triton serves every version: Ready.
    ready = eventually(lambda: condition(cluster, "echo", "Ready").get("status") == "True", timeout=120)
    assert ready and condition(cluster, "echo", "Ready")["reason"] == "Serving"
    paths = {item["name"]: item["path"] for item in status(cluster, "echo")["endpoints"]}
    assert paths["latest"] == "/v1/models/echo/infer" and paths["v1"] == "/v1/models/echo/versions/1/infer"


def test_a_version_that_fails_to_load_degrades_the_model_deployment(cluster: Cluster, deployed: str) -> None:
    cluster.apply(echo("flaky", "flaky"))
    degraded = eventually(
        lambda: (
            condition(cluster, "flaky", "Degraded").get("status") == "True"
            and condition(cluster, "flaky", "Degraded")
        )
    )
    assert degraded["reason"] == "VersionFailed"
    assert "version 2" in degraded["message"] and "broken on purpose" in degraded["message"]
    assert {item["version"]: item["state"] for item in status(cluster, "flaky")["versions"]} == {
        "2": "Unavailable",
        "1": "Unavailable",
    }


def test_a_spec_change_rolls_the_pods(cluster: Cluster, deployed: str) -> None:
    before = cluster.get("deployment", "echo-triton", NAMESPACE)["spec"]["template"]["metadata"][
        "annotations"
    ]
    cluster.patch("md", "echo", NAMESPACE, {"spec": {"batching": {"maxQueueDelayMicroseconds": 750}}})

    def rolled() -> Any:
        template = cluster.get("deployment", "echo-triton", NAMESPACE)["spec"]["template"]["metadata"]
        return template["annotations"] != before and template

    eventually(rolled)
    assert (
        "max_queue_delay_microseconds: 750"
        in cluster.get("configmap", "echo-model-config", NAMESPACE)["data"]["config.pbtxt"]
    )
    # kube-controller-manager's deployment controller starts a new ReplicaSet for the new pod template.
    eventually(
        lambda: (
            len(
                cluster.kubectl(
                    "get", "rs", "-n", NAMESPACE, "-l", "tollway.dev/model=echo", "-o", "name"
                ).stdout.split()
            )
            == 2
        )
    )


def test_an_edited_or_deleted_child_is_restored(cluster: Cluster, deployed: str) -> None:
    image = cluster.get("deployment", "echo-triton", NAMESPACE)["spec"]["template"]["spec"]["containers"][0][
        "image"
    ]
    cluster.kubectl("set", "image", "deployment/echo-triton", "-n", NAMESPACE, "triton=example.com/other:1")
    eventually(
        lambda: (
            cluster.get("deployment", "echo-triton", NAMESPACE)["spec"]["template"]["spec"]["containers"][0][
                "image"
            ]
            == image
        )
    )
    cluster.kubectl("delete", "service", "echo-triton", "-n", NAMESPACE)
    eventually(
        lambda: cluster.kubectl("get", "service", "echo-triton", "-n", NAMESPACE, check=False).returncode == 0
    )


def test_a_field_removed_from_the_spec_leaves_the_child(cluster: Cluster, deployed: str) -> None:
    def node_selector() -> Any:
        return cluster.get("deployment", "echo-triton", NAMESPACE)["spec"]["template"]["spec"].get(
            "nodeSelector"
        )

    cluster.patch("md", "echo", NAMESPACE, {"spec": {"triton": {"nodeSelector": {"pool": "cpu"}}}})
    eventually(lambda: node_selector() == {"pool": "cpu"})
    cluster.kubectl(
        "patch",
        "md",
        "echo",
        "-n",
        NAMESPACE,
        "--type",
        "json",
        "-p",
        '[{"op": "remove", "path": "/spec/triton/nodeSelector"}]',
    )
    eventually(lambda: not node_selector())


def test_a_no_op_resync_writes_nothing(cluster: Cluster, deployed: str) -> None:
    def versions() -> dict[str, str]:
        found = {"md": cluster.get("md", "echo", NAMESPACE)["metadata"]["resourceVersion"]}
        for kind, name in CHILDREN:
            found[kind] = cluster.get(kind, name, NAMESPACE)["metadata"]["resourceVersion"]
        return found

    eventually(
        lambda: (
            condition(cluster, "echo", "Ready").get("observedGeneration")
            == cluster.get("md", "echo", NAMESPACE)["metadata"]["generation"]
            # and the rollouts of the tests before (their pods run) are over
            and condition(cluster, "echo", "Progressing").get("status") == "False"
        ),
        timeout=120,
    )
    time.sleep(3)  # let the last status and children land
    before = versions()
    time.sleep(5)  # five resyncs of every object
    assert versions() == before


def test_deleting_the_model_deployment_collects_its_children(cluster: Cluster, deployed: str) -> None:
    cluster.apply(echo("doomed", "doomed"))
    eventually(lambda: found(cluster, "deployment", "doomed-triton"))
    cluster.kubectl("delete", "md", "doomed", "-n", NAMESPACE, "--timeout", "60s")
    for kind in ("deployment", "service", "configmap", "serviceaccount", "poddisruptionbudget"):
        eventually(lambda kind=kind: labelled(cluster, kind, "doomed") == [])


def test_a_child_no_longer_rendered_is_removed(cluster: Cluster, deployed: str) -> None:
    assert found(cluster, "poddisruptionbudget", "echo-triton")
    cluster.patch("md", "echo", NAMESPACE, {"spec": {"autoscaling": {"maxReplicas": 1}}})
    eventually(lambda: found(cluster, "poddisruptionbudget", "echo-triton") is None)
    assert found(cluster, "deployment", "echo-triton")
