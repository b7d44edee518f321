"""What the operator keeps of its children from kopf's watches (`tollway.k8s.watched`), and the lookups a
reconcile makes in it, on bodies as the API server sends them."""

from __future__ import annotations

from typing import Any

from tollway.ir.state import DeploymentState, PodProblem, ReadyPod
from tollway.k8s.apply import UNSEEN
from tollway.k8s.cache import seen_by_namespace
from tollway.k8s.watched import (
    CHILD_KINDS,
    DEPLOYMENTS_INDEX,
    INDEX_IDS,
    POD_PROBLEMS_INDEX,
    READY_PODS_INDEX,
    SECRETS_INDEX,
    WatchedChildren,
    deployment_of,
    pod_problems_of,
    ready_pod_of,
    secret_of,
    version_of,
)


def metadata(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": "ai", "resourceVersion": "41", **extra}


def pending_pod(name: str, model: str | None) -> dict[str, Any]:
    labels = {"tollway.dev/model": model} if model else {}
    return {
        "metadata": metadata(name, labels=labels),
        "status": {
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu.",
                }
            ],
            "containerStatuses": [
                {
                    "name": "triton",
                    "state": {"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}},
                },
                {"name": "sidecar", "state": {"waiting": {"reason": "ContainerCreating"}}},
            ],
        },
    }


def test_a_deployment_is_kept_as_its_state() -> None:
    body = {
        "metadata": metadata("chat-triton", generation=3),
        "spec": {"replicas": 2},
        "status": {
            "observedGeneration": 3,
            "readyReplicas": 1,
            "availableReplicas": 1,
            "updatedReplicas": 2,
            "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}],
        },
    }
    assert deployment_of(body) == {
        ("ai", "chat-triton"): DeploymentState(
            generation=3,
            observed_generation=3,
            replicas=2,
            ready_replicas=1,
            available_replicas=1,
            updated_replicas=2,
            progress_deadline_exceeded=True,
        )
    }
    fresh = deployment_of({"metadata": metadata("new"), "spec": {}})[("ai", "new")]
    assert (fresh.replicas, fresh.ready_replicas, fresh.progress_deadline_exceeded) == (0, 0, False)


def test_a_pod_is_kept_only_for_its_problems_under_its_model() -> None:
    assert pod_problems_of(pending_pod("chat-triton-abc", "chat")) == {
        ("ai", "chat"): (
            PodProblem(
                "Unschedulable",
                "pod chat-triton-abc: 0/2 nodes are available: 2 Insufficient nvidia.com/gpu.",
            ),
            PodProblem("ImagePullBackOff", "pod chat-triton-abc, container triton: no such image"),
        )
    }
    assert pod_problems_of(pending_pod("tollway-gateway-abc", None)) == {}  # the gateway's: no model
    running = {"metadata": metadata("chat-triton-def", labels={"tollway.dev/model": "chat"}), "status": {}}
    assert pod_problems_of(running) == {}


def triton_pod(name: str, ready: str = "True", **extra: Any) -> dict[str, Any]:
    labels = {
        "tollway.dev/model": "chat",
        "app.kubernetes.io/name": "triton",
        "app.kubernetes.io/instance": "chat",
        "pod-template-hash": "7d9f",
    }
    owner = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "chat-triton-7d9f", "controller": True}
    return {
        "metadata": metadata(name, labels=labels, ownerReferences=[owner], **extra),
        "spec": {},
        "status": {"podIP": "10.1.2.3", "conditions": [{"type": "Ready", "status": ready}]},
    }


def test_a_ready_triton_pod_is_kept_as_its_name_and_address_under_its_model() -> None:
    assert ready_pod_of(triton_pod("chat-triton-abc")) == {
        ("ai", "chat"): ReadyPod("chat-triton-abc", "10.1.2.3")
    }
    assert ready_pod_of(triton_pod("chat-triton-abc", ready="False")) == {}
    assert ready_pod_of(triton_pod("chat-triton-abc", deletionTimestamp="2026-12-03T12:00:00Z")) == {}
    cache = triton_pod("chat-cache-abc")
    cache["metadata"]["labels"]["app.kubernetes.io/name"] = "answer-cache"  # the model's Redis: no queue
    assert ready_pod_of(cache) == {}
    starting = triton_pod("chat-triton-def")
    del starting["status"]["podIP"]
    assert ready_pod_of(starting) == {}
    # Labels alone do not make a pod the model's: its controller must be a ReplicaSet of the model's Triton
    # Deployment, and its address its own (the floor reads what is there).
    stray = triton_pod("chat-triton-xyz")
    stray["metadata"]["ownerReferences"] = []
    assert ready_pod_of(stray) == {}
    other = triton_pod("chat-triton-xyz")
    other["metadata"]["ownerReferences"][0]["name"] = "elsewhere-7d9f"
    assert ready_pod_of(other) == {}
    on_the_node = triton_pod("chat-triton-xyz")
    on_the_node["spec"]["hostNetwork"] = True
    assert ready_pod_of(on_the_node) == {}


def test_a_secret_is_kept_as_its_name_and_data() -> None:
    body = {
        "metadata": metadata("chat-triton", managedFields=[{"manager": "tollway"}]),
        "data": {"key": "YQ=="},
    }
    assert secret_of(body) == {
        ("ai", "chat-triton"): {"metadata": {"name": "chat-triton"}, "data": {"key": "YQ=="}}
    }


def test_lookups_answer_what_the_indexes_hold_and_none_for_what_they_do_not() -> None:
    """kopf hands an index as key → the values of every object indexed under it."""
    indexes: dict[str, dict[Any, list[Any]]] = {name: {} for name in INDEX_IDS}
    model_labels = {"tollway.dev/model": "chat"}
    configmaps = [
        {"metadata": metadata("chat-model-config", labels=model_labels)},
        {"metadata": metadata("chat-dashboard", labels=model_labels, resourceVersion="7")},
        {"metadata": metadata("tollway-gateway-capacity", labels={"tollway.dev/gateway": "tollway-gateway"})},
    ]
    for body in configmaps:  # children under what they belong to: a model, or the gateway
        for key, value in version_of(body).items():
            indexes["configmaps_versions"].setdefault(key, []).append(value)
    assert set(indexes["configmaps_versions"]) == {("ai", "chat"), ("ai", "gateway/tollway-gateway")}
    state = DeploymentState(1, 1, 1, 1, 1, 1)
    indexes[DEPLOYMENTS_INDEX] = {("ai", "chat-triton"): [state]}
    problems = pod_problems_of(pending_pod("chat-triton-abc", "chat"))[("ai", "chat")]
    indexes[POD_PROBLEMS_INDEX] = {("ai", "chat"): [problems, problems[:1]]}  # two pods of one model
    indexes[SECRETS_INDEX] = {("ai", "chat-triton"): [{"metadata": {"name": "chat-triton"}, "data": {}}]}
    pod = ReadyPod("chat-triton-abc", "10.1.2.3")
    indexes[READY_PODS_INDEX] = {("ai", "chat"): [pod], ("ai", "gone"): []}
    watched = WatchedChildren(indexes)

    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": configmaps[1]["metadata"]}
    assert watched.version(configmap) == "7"
    assert watched.version({**configmap, "metadata": {**configmap["metadata"], "name": "other"}}) == UNSEEN
    gateway = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": configmaps[2]["metadata"]}
    assert watched.version(gateway) == "41"
    assert watched.may_own("v1", "ConfigMap", "ai", "chat") and not watched.may_own(
        "v1", "ConfigMap", "ai", "other"
    )
    assert not watched.may_own("autoscaling/v2", "HorizontalPodAutoscaler", "ai", "chat")  # watched: none
    assert watched.may_own("keda.sh/v1alpha1", "ScaledObject", "ai", "chat")  # not watched: may
    monitor = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": configmap["metadata"],
    }
    assert watched.version(monitor) is None  # a kind not watched: always read
    assert watched.deployment("ai", "chat-triton") == state and watched.deployment("ai", "gone") is None
    assert len(watched.pod_problems("ai", "chat")) == 3 and watched.pod_problems("ai", "other") == ()
    assert watched.secret("ai", "chat-triton") == {"metadata": {"name": "chat-triton"}, "data": {}}
    assert watched.secret("ai", "gone") is None
    assert watched.ready_pods() == {("ai", "chat"): (pod,)}  # a model whose last pod went is left out


def test_every_kind_tollway_renders_that_every_cluster_serves_is_watched() -> None:
    assert {kind.kind for kind in CHILD_KINDS} == {
        "Deployment",
        "Service",
        "ConfigMap",
        "ServiceAccount",
        "Secret",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "HorizontalPodAutoscaler",
    }
    assert {kind.api_version for kind in CHILD_KINDS} >= {"v1", "apps/v1", "autoscaling/v2"}


def test_an_indexed_resource_is_kept_whole_but_for_its_managed_fields() -> None:
    body = {"metadata": metadata("chat", managedFields=[{"manager": "kubectl"}]), "spec": {"a": [1]}}
    (seen,) = seen_by_namespace(body).values()
    assert seen.body == {"metadata": metadata("chat"), "spec": {"a": [1]}}
    seen.body["spec"]["a"].append(2)
    assert body["spec"] == {"a": [1]}  # a copy: kopf reuses what it hands over
