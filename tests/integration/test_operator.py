"""`tollway run` against the real control plane: conditions appear, follow the generation, and settle."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from typing import Any

from builders import api_tier, model_deployment
from testbed.kube import Cluster, Operator, eventually

NAMESPACE = f"operator-test-{os.getpid()}"  # fresh on every run, also against a control plane left up
RESYNC_SECONDS = 1  # as kube.operator() runs it


def conditions(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["type"]: item for item in (document.get("status") or {}).get("conditions", [])}


def settled(cluster: Cluster, kind: str, name: str) -> dict[str, Any] | None:
    """The object once its status describes its current generation and its children as seen (the pass
    that creates a Deployment says Creating; the Deployment's watch event brings the next), else None."""
    document = cluster.get(kind, name, NAMESPACE)
    generation = document["metadata"]["generation"]
    found = conditions(document)
    ready = found.get("Ready")
    done = (
        ready
        and ready["observedGeneration"] == generation
        and ready["reason"] != "Creating"
        and document["status"]["observedGeneration"] == generation
    )
    return document if done else None


def applied(cluster: Cluster, tier: str) -> dict[str, Any] | None:
    document = settled(cluster, "tier", tier)
    return document if document and conditions(document)["Ready"]["reason"] == "Applied" else None


def test_conditions_appear_with_the_observed_generation(cluster: Cluster, running_operator: Operator) -> None:
    cluster.apply(model_deployment("chat", **{"metadata.namespace": NAMESPACE}))
    cluster.apply(api_tier("pro", **{"metadata.namespace": NAMESPACE}))
    model = eventually(lambda: settled(cluster, "md", "chat"))
    assert set(conditions(model)) == {"Ready", "Progressing", "Degraded"}
    assert not model["metadata"].get("finalizers")  # deletable even while the operator is away
    assert all(item["observedGeneration"] == 1 for item in conditions(model).values())
    # Ready once the gateway's Envoy pod is scheduled onto a simulated node and reported running (by kwok).
    tier = eventually(lambda: applied(cluster, "pro"), timeout=120)
    assert conditions(tier)["Ready"]["observedGeneration"] == 1


def test_a_spec_change_is_observed_without_moving_transition_times(
    cluster: Cluster, running_operator: Operator
) -> None:
    cluster.apply(model_deployment("rolling", **{"metadata.namespace": NAMESPACE}))
    before = eventually(lambda: settled(cluster, "md", "rolling"))
    cluster.patch("md", "rolling", NAMESPACE, {"spec": {"triton": {"gpus": 2}}})
    after = eventually(lambda: settled(cluster, "md", "rolling"))
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1
    ready_before, ready_after = conditions(before)["Ready"], conditions(after)["Ready"]
    assert ready_after["lastTransitionTime"] == ready_before["lastTransitionTime"]
    assert ready_after["observedGeneration"] == after["metadata"]["generation"]


def test_a_settled_resource_gets_zero_writes_across_resyncs(
    cluster: Cluster, running_operator: Operator
) -> None:
    cluster.apply(model_deployment("steady", **{"metadata.namespace": NAMESPACE}))
    eventually(lambda: settled(cluster, "md", "steady"))
    time.sleep(RESYNC_SECONDS * 2)  # let the finalizer and first status land
    version = cluster.get("md", "steady", NAMESPACE)["metadata"]["resourceVersion"]
    time.sleep(RESYNC_SECONDS * 5)  # five resyncs and their reconciles
    assert cluster.get("md", "steady", NAMESPACE)["metadata"]["resourceVersion"] == version


def test_condition_changes_are_recorded_as_events(cluster: Cluster, running_operator: Operator) -> None:
    cluster.apply(api_tier("announced", **{"metadata.namespace": NAMESPACE}))

    def events() -> list[dict[str, Any]] | None:
        listing = json.loads(
            cluster.kubectl("get", "events.events.k8s.io", "-n", NAMESPACE, "-o", "json").stdout
        )
        found = [item for item in listing["items"] if item["regarding"]["name"] == "announced"]
        reasons = {item["reason"] for item in found}
        return found if {"Applied", "AsExpected"} <= reasons else None

    found = eventually(events, timeout=120)
    # On the way Ready may say GatewayUnavailable, while the gateway's Envoy pod rolls to the new rules.
    assert {(item["type"], item["reason"]) for item in found} <= {
        ("Normal", "GatewayUnavailable"),
        ("Normal", "Applied"),
        ("Normal", "AsExpected"),
    }
    assert all(item["reportingController"] == "tollway.dev/operator" for item in found)


def test_a_deleted_resource_goes_away(cluster: Cluster, running_operator: Operator) -> None:
    cluster.apply(model_deployment("doomed", **{"metadata.namespace": NAMESPACE}))
    eventually(lambda: settled(cluster, "md", "doomed"))
    cluster.kubectl("delete", "md", "doomed", "-n", NAMESPACE, "--timeout", "30s")
    gone = cluster.kubectl("get", "md", "doomed", "-n", NAMESPACE, check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr


def test_liveness_endpoint_and_json_logs(cluster: Cluster, running_operator: Operator) -> None:
    def alive() -> bool:
        try:
            with urllib.request.urlopen(running_operator.liveness, timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    assert eventually(alive)
    lines = running_operator.log_lines()
    assert lines and all(isinstance(json.loads(line), dict) for line in lines)


def strip_rules(schema: Any) -> Any:
    """A CRD schema without its CEL rules: what an older Tollway's CRD would let through."""
    if isinstance(schema, dict):
        return {key: strip_rules(value) for key, value in schema.items() if key != "x-kubernetes-validations"}
    if isinstance(schema, list):
        return [strip_rules(item) for item in schema]
    return schema


def test_an_invalid_spec_that_got_past_admission_is_refused_whole(
    cluster: Cluster, running_operator: Operator
) -> None:
    crd = cluster.get("crd", "modeldeployments.tollway.dev", "")
    lenient = {
        "apiVersion": crd["apiVersion"],
        "kind": crd["kind"],
        "metadata": {"name": crd["metadata"]["name"]},
        "spec": strip_rules(crd["spec"]),
    }
    try:
        cluster.apply_server_side(lenient)
        broken = model_deployment(
            "broken", **{"metadata.namespace": NAMESPACE, "spec.aliases": {"latest": "9"}}
        )
        eventually(
            lambda: cluster.kubectl("apply", "-f", "-", stdin=json.dumps(broken), check=False).returncode == 0
        )
        model = eventually(lambda: settled(cluster, "md", "broken"))
    finally:
        original = {**lenient, "spec": crd["spec"]}
        cluster.apply_server_side(original)
    ready, degraded = conditions(model)["Ready"], conditions(model)["Degraded"]
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert ready["message"] == "spec.aliases: every alias must name a version listed in spec.versions"
    assert (degraded["status"], degraded["reason"]) == ("True", "InvalidSpec")
    listing = cluster.kubectl(
        "get", "deploy,svc,cm,sa,pdb", "-n", NAMESPACE, "-l", "tollway.dev/model=broken", "-o", "name"
    )
    assert listing.stdout.strip() == ""  # nothing half-applied

    def warnings() -> list[dict[str, Any]]:
        listing = json.loads(
            cluster.kubectl("get", "events.events.k8s.io", "-n", NAMESPACE, "-o", "json").stdout
        )
        return [
            item
            for item in listing["items"]
            if item["regarding"]["name"] == "broken" and item["type"] == "Warning"
        ]

    found = eventually(warnings)
    assert any("spec.aliases" in item["note"] for item in found)
