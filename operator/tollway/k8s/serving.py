"""Reading a Deployment the operator's watch has not seen yet (just made), as a plain observation."""

from __future__ import annotations

from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tollway.ir.state import DeploymentState
from tollway.k8s.client import api_client
from tollway.k8s.watched import deployment_of


def deployment_state(namespace: str, name: str) -> DeploymentState | None:
    try:
        found: Any = client.AppsV1Api(api_client()).read_namespaced_deployment(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return deployment_of(api_client().sanitize_for_serialization(found))[(namespace, name)]
