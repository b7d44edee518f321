"""The single status writer: server-side apply of the status fields Tollway owns, on the subresource."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

from tollway.api import GROUP, VERSION, Resource
from tollway.k8s.apply import FIELD_MANAGER
from tollway.k8s.client import custom_objects


def apply_status(kind: type[Resource], metadata: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    """Apply `status` with field manager `tollway`; fields other managers own are left alone.

    False when the object is gone (deleted between the event and this write): nothing left to report on.
    """
    try:
        _apply(kind, metadata, status)
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


def _apply(kind: type[Resource], metadata: Mapping[str, Any], status: Mapping[str, Any]) -> None:
    custom_objects().patch_namespaced_custom_object_status(
        group=GROUP,
        version=VERSION,
        namespace=metadata["namespace"],
        plural=kind.plural,
        name=metadata["name"],
        body={
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": kind.kind_name,
            "metadata": {"name": metadata["name"], "namespace": metadata["namespace"]},
            "status": dict(status),
        },
        field_manager=FIELD_MANAGER,
        force=True,
        _content_type="application/apply-patch+yaml",
    )
