"""Reading what a ModelDeployment's Triton Deployment and its pods show, as plain observations."""

from __future__ import annotations

from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tollway.ir.state import DeploymentState, PodProblem
from tollway.k8s.client import api_client

#: Container waiting reasons that mean the pod will not start without a change.
STUCK = {
    "ImagePullBackOff",
    "ErrImagePull",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "InvalidImageName",
}


def deployment_state(namespace: str, name: str) -> DeploymentState | None:
    try:
        found: Any = client.AppsV1Api(api_client()).read_namespaced_deployment(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    status = found.status
    stalled = any(
        condition.type == "Progressing" and condition.reason == "ProgressDeadlineExceeded"
        for condition in status.conditions or []
    )
    return DeploymentState(
        generation=found.metadata.generation or 0,
        observed_generation=status.observed_generation or 0,
        replicas=found.spec.replicas or 0,
        ready_replicas=status.ready_replicas or 0,
        available_replicas=status.available_replicas or 0,
        updated_replicas=status.updated_replicas or 0,
        progress_deadline_exceeded=stalled,
    )


def pod_problems(namespace: str, model: str) -> tuple[PodProblem, ...]:
    """Why the model's pods do not run: stuck containers, or no node that fits (GPU, selector, taints)."""
    pods: Any = client.CoreV1Api(api_client()).list_namespaced_pod(
        namespace, label_selector=f"tollway.dev/model={model}"
    )
    problems: list[PodProblem] = []
    for pod in pods.items:
        for condition in pod.status.conditions or []:
            if condition.type == "PodScheduled" and condition.reason == "Unschedulable":
                problems.append(PodProblem("Unschedulable", f"pod {pod.metadata.name}: {condition.message}"))
        for container in [
            *(pod.status.init_container_statuses or []),
            *(pod.status.container_statuses or []),
        ]:
            waiting = container.state.waiting if container.state else None
            if waiting is not None and waiting.reason in STUCK:
                where = f"pod {pod.metadata.name}, container {container.name}"
                problems.append(PodProblem(waiting.reason, f"{where}: {waiting.message or waiting.reason}"))
    return tuple(problems)
