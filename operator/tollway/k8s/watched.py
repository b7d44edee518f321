"""Tollway's children as the operator's watches last saw them, from kopf's indexes.

kopf watches every kind of child anyway (so that an edited or deleted child is restored at once); indexing
those watches lets a reconcile of an unchanged model read nothing from the API server:

- each child's resourceVersion, so that the apply layer skips the read of a child it already confirmed at
  that version (`tollway.k8s.apply.Applier`);
- each Deployment's state, each model's pod problems and ready Triton pods (the burst floor reads their
  queue), and Tollway's own Secrets (Triton's admin key), reduced at indexing time to what a reconcile
  uses, so that memory holds no full bodies.

An index lags the API server by the watch's delay: a child missing from it is asked of the API server (it
may be new), and a child that changed after being indexed sends a watch event that reconciles again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from tollway.ir.names import MODEL_LABEL, serving_children, serving_pod_labels
from tollway.ir.state import DeploymentState, PodProblem, ReadyPod
from tollway.k8s.apply import UNSEEN
from tollway.k8s.cache import Index, snapshot

#: Container waiting reasons that mean the pod will not start without a change.
STUCK = frozenset(
    {"ImagePullBackOff", "ErrImagePull", "CrashLoopBackOff", "CreateContainerConfigError", "InvalidImageName"}
)
GATEWAY_LABEL = "tollway.dev/gateway"
TEMPLATE_HASH = "pod-template-hash"
"""The Deployment controller's label on a ReplicaSet's pods: the ReplicaSet is named DEPLOYMENT-HASH."""
#: The label every child carries (and Triton's pods, through their template), which the watches select on.
OURS = {"app.kubernetes.io/managed-by": "tollway"}


@dataclass(frozen=True)
class ChildKind:
    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def index_id(self) -> str:
        """The name of the kind's index of resourceVersions (kopf passes it to handlers by this name)."""
        return f"{self.plural}_versions"


#: The kinds of children whose resourceVersions are indexed: every kind Tollway renders that every cluster
#: serves (the CRD kinds, KEDA's and prometheus-operator's, are read when applied).
CHILD_KINDS = (
    ChildKind("apps", "v1", "deployments", "Deployment"),
    ChildKind("", "v1", "services", "Service"),
    ChildKind("", "v1", "configmaps", "ConfigMap"),
    ChildKind("", "v1", "serviceaccounts", "ServiceAccount"),
    ChildKind("", "v1", "secrets", "Secret"),
    ChildKind("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget"),
    ChildKind("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy"),
    ChildKind("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler"),
)
DEPLOYMENTS_INDEX = "deployment_states"
POD_PROBLEMS_INDEX = "pod_problems"
READY_PODS_INDEX = "ready_pods"
SECRETS_INDEX = "generated_secrets"
INDEX_IDS = (
    *(kind.index_id for kind in CHILD_KINDS),
    DEPLOYMENTS_INDEX,
    POD_PROBLEMS_INDEX,
    READY_PODS_INDEX,
    SECRETS_INDEX,
)

T = TypeVar("T")
Key = tuple[str, str]
"""(namespace, name)"""


def _key(body: Mapping[str, Any]) -> Key:
    return str(body["metadata"]["namespace"]), str(body["metadata"]["name"])


# kopf's indexing functions: each gets a child's body and returns what its index keeps of it.


def owner_of(metadata: Mapping[str, Any]) -> str:
    """What a child belongs to, by its labels: a model's name, or "gateway/NAME"."""
    labels = metadata.get("labels") or {}
    if labels.get(MODEL_LABEL):
        return str(labels[MODEL_LABEL])
    return f"gateway/{labels.get(GATEWAY_LABEL, '')}"


def version_of(body: Mapping[str, Any]) -> dict[Key, tuple[str, str]]:
    """The child's name and resourceVersion under (namespace, what it belongs to)."""
    metadata = body["metadata"]
    return {
        (str(metadata["namespace"]), owner_of(metadata)): (
            str(metadata["name"]),
            str(metadata["resourceVersion"]),
        )
    }


def deployment_of(body: Mapping[str, Any]) -> dict[Key, DeploymentState]:
    spec, status = body.get("spec") or {}, body.get("status") or {}
    stalled = any(
        condition.get("type") == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded"
        for condition in status.get("conditions") or []
    )
    state = DeploymentState(
        generation=body["metadata"].get("generation") or 0,
        observed_generation=status.get("observedGeneration") or 0,
        replicas=spec.get("replicas") or 0,
        ready_replicas=status.get("readyReplicas") or 0,
        available_replicas=status.get("availableReplicas") or 0,
        updated_replicas=status.get("updatedReplicas") or 0,
        progress_deadline_exceeded=stalled,
    )
    return {_key(body): state}


def pod_problems_of(body: Mapping[str, Any]) -> dict[Key, tuple[PodProblem, ...]]:
    """Why the pod does not run (stuck containers, or no node that fits), under its model; nothing when it
    runs or belongs to no model (the gateway's)."""
    model = (body["metadata"].get("labels") or {}).get(MODEL_LABEL)
    name, status = body["metadata"]["name"], body.get("status") or {}
    problems = [
        PodProblem("Unschedulable", f"pod {name}: {condition.get('message', '')}")
        for condition in status.get("conditions") or []
        if condition.get("type") == "PodScheduled" and condition.get("reason") == "Unschedulable"
    ]
    for container in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in STUCK:
            where = f"pod {name}, container {container.get('name')}"
            message = waiting.get("message") or waiting["reason"]
            problems.append(PodProblem(waiting["reason"], f"{where}: {message}"))
    if not model or not problems:
        return {}
    return {(str(body["metadata"]["namespace"]), str(model)): tuple(problems)}


def ready_pod_of(body: Mapping[str, Any]) -> dict[Key, ReadyPod]:
    """A model's Triton pod that is ready (and not on its way out), under its model: its name and address.
    Only a pod of the model's Triton Deployment counts (its controller a ReplicaSet of that Deployment), on
    an address of its own (not the node's): the burst floor reads its metrics page."""
    metadata, status = body["metadata"], body.get("status") or {}
    labels = metadata.get("labels") or {}
    model = labels.get(MODEL_LABEL)
    triton = (
        bool(model)
        and serving_pod_labels(str(model)).items() <= labels.items()
        and _replica_set_of(metadata)
        == f"{serving_children(str(model))['triton']}-{labels.get(TEMPLATE_HASH)}"
        and not (body.get("spec") or {}).get("hostNetwork")
    )
    ready = triton and any(
        condition.get("type") == "Ready" and condition.get("status") == "True"
        for condition in status.get("conditions") or []
    )
    if not ready or not status.get("podIP") or metadata.get("deletionTimestamp"):
        return {}
    return {(str(metadata["namespace"]), str(model)): ReadyPod(str(metadata["name"]), str(status["podIP"]))}


def _replica_set_of(metadata: Mapping[str, Any]) -> str | None:
    controllers = [
        owner
        for owner in metadata.get("ownerReferences") or []
        if owner.get("controller") and owner.get("kind") == "ReplicaSet"
    ]
    return str(controllers[0].get("name")) if controllers else None


def secret_of(body: Mapping[str, Any]) -> dict[Key, dict[str, Any]]:
    """A Secret Tollway generated, as kept_or_fresh reads it: its name and data."""
    kept = {"metadata": {"name": body["metadata"]["name"]}, "data": dict(body.get("data") or {})}
    return {_key(body): kept}


class WatchedChildren:
    """Lookups in the children's indexes; None means the watch has not seen the object (or it is gone)."""

    def __init__(self, indexes: Mapping[str, Index[Any]]) -> None:
        self._indexes = indexes
        self._versions = {(kind.api_version, kind.kind): kind.index_id for kind in CHILD_KINDS}

    def version(self, manifest: Mapping[str, Any]) -> str | None:
        """The resourceVersion the watch last saw of the child that `manifest` renders; UNSEEN: its watch has
        not seen it; None: its kind is not watched."""
        metadata = manifest["metadata"]
        owned = self._owned(
            manifest["apiVersion"], manifest["kind"], str(metadata.get("namespace")), owner_of(metadata)
        )
        if owned is None:
            return None
        return next((version for name, version in owned if name == metadata["name"]), UNSEEN)

    def may_own(self, api_version: str, kind: str, namespace: str, model: str) -> bool:
        """Whether the model may have a child of this kind: False only when the kind is watched and the watch
        shows none."""
        owned = self._owned(api_version, kind, namespace, model)
        return owned is None or bool(owned)

    def may_exist(self, api_version: str, kind: str, name: str, namespace: str, owner: str) -> bool:
        """Whether the owner may have this child: False only when its kind is watched and the watch does not
        show it."""
        owned = self._owned(api_version, kind, namespace, owner)
        return owned is None or any(found == name for found, _ in owned)

    def _owned(self, api_version: str, kind: str, namespace: str, owner: str) -> list[tuple[str, str]] | None:
        """(name, resourceVersion) of the owner's children of a kind, as watched; None: the kind is not."""
        index_id = self._versions.get((api_version, kind))
        if index_id is None:
            return None
        return snapshot(self._indexes[index_id].get((namespace, owner), ()))

    def deployment(self, namespace: str, name: str) -> DeploymentState | None:
        return self._one(DEPLOYMENTS_INDEX, (namespace, name), DeploymentState)

    def pod_problems(self, namespace: str, model: str) -> tuple[PodProblem, ...]:
        found = snapshot(self._indexes[POD_PROBLEMS_INDEX].get((namespace, model), ()))
        return tuple(problem for problems in found for problem in problems)

    def ready_pods(self) -> dict[Key, tuple[ReadyPod, ...]]:
        """Every model's ready pods, by (namespace, model)."""
        index = self._indexes[READY_PODS_INDEX]
        found = {cast(Key, key): tuple(snapshot(index.get(key, ()))) for key in snapshot(index)}
        return {key: pods for key, pods in found.items() if pods}

    def secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._one(SECRETS_INDEX, (namespace, name), dict)

    def _one(self, index_id: str, key: Key, kind: type[T]) -> T | None:
        found = next(iter(snapshot(self._indexes[index_id].get(key, ()))), None)
        return found if isinstance(found, kind) else None
