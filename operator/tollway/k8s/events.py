"""Kubernetes Events about Tollway resources (events.k8s.io/v1), so `kubectl describe` tells the story."""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tollway.api import API_VERSION, Resource
from tollway.k8s.client import api_client

CONTROLLER = "tollway.dev/operator"
log = logging.getLogger(__name__)


def record_event(
    kind: type[Resource],
    metadata: Mapping[str, Any],
    *,
    type: Literal["Normal", "Warning"],
    reason: str,
    note: str,
) -> None:
    namespace = metadata["namespace"]
    event: Any = {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"generateName": f"{metadata['name']}-", "namespace": namespace},
        "eventTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "reportingController": CONTROLLER,
        "reportingInstance": socket.gethostname()[:128],
        "action": "Reconcile",
        "reason": reason,
        "note": note.encode()[:1024].decode(errors="ignore"),  # the API's limit is 1 KiB, in bytes
        "type": type,
        "regarding": {
            "apiVersion": API_VERSION,
            "kind": kind.kind_name,
            "name": metadata["name"],
            "namespace": namespace,
            "uid": metadata.get("uid"),
        },
    }
    try:
        client.EventsV1Api(api_client()).create_namespaced_event(namespace, event)  # plain dicts are accepted
    except ApiException as error:  # an event is worth a log line, never a failed reconcile
        log.warning(
            "could not record event %s on %s/%s: %s", reason, namespace, metadata["name"], error.reason
        )
