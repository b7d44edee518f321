"""Reading Tollway's own resources."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tollway.api import GROUP, VERSION, Resource
from tollway.k8s.client import api_client, custom_objects


def read_resource(kind: type[Resource], namespace: str, name: str) -> dict[str, Any] | None:
    """The object as the API server holds it now; None when it is gone."""
    try:
        found = custom_objects().get_namespaced_custom_object(GROUP, VERSION, namespace, kind.plural, name)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return cast(dict[str, Any], found)  # custom objects come back as plain JSON dicts


def list_secrets(namespace: str) -> list[dict[str, Any]]:
    """The namespace's Secrets as plain JSON dicts (data base64-encoded, as the API server holds it)."""
    listing = client.CoreV1Api(api_client()).list_namespaced_secret(namespace)
    return [api_client().sanitize_for_serialization(item) for item in listing.items]


def read_secret(namespace: str, name: str) -> dict[str, Any] | None:
    """The Secret as a plain JSON dict; None when there is none."""
    try:
        found = client.CoreV1Api(api_client()).read_namespaced_secret(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return cast(dict[str, Any], api_client().sanitize_for_serialization(found))


def mark_secret(
    namespace: str, name: str, labels: Mapping[str, str | None], annotations: Mapping[str, str | None]
) -> None:
    """A merge patch of a Secret's labels and annotations (None deletes one): only these keys are touched,
    on a Secret that is someone else's (an API key's), so no server-side apply takes its fields over."""
    patch = {"metadata": {"labels": dict(labels), "annotations": dict(annotations)}}
    client.CoreV1Api(api_client()).patch_namespaced_secret(name, namespace, patch)


def peering_peers(name: str, namespace: str | None) -> dict[str, dict[str, Any]]:
    """The operators that keep kopf's peering object `name` alive (its status: identity → priority,
    lastseen, lifetime): a ClusterKopfPeering, or the KopfPeering in `namespace`. Listed by name, since
    the chart grants list and watch on it, not get."""
    selector = f"metadata.name={name}"
    if namespace is None:
        listing: Any = custom_objects().list_cluster_custom_object(
            "kopf.dev", "v1", "clusterkopfpeerings", field_selector=selector
        )
    else:
        listing = custom_objects().list_namespaced_custom_object(
            "kopf.dev", "v1", namespace, "kopfpeerings", field_selector=selector
        )
    return {
        peer: dict(info) for item in listing["items"] for peer, info in (item.get("status") or {}).items()
    }


def list_resources(kind: type[Resource], namespace: str | None) -> list[dict[str, Any]]:
    """Every object of `kind` in `namespace`, or in all namespaces when it is None."""
    if namespace is None:
        listing: Any = custom_objects().list_cluster_custom_object(GROUP, VERSION, kind.plural)
    else:
        listing = custom_objects().list_namespaced_custom_object(GROUP, VERSION, namespace, kind.plural)
    return list(listing["items"])


#: Conflicts a raise of a Deployment's scale reads again after (the autoscaler writing it at the same time).
SCALE_ATTEMPTS = 3


def raise_replicas(namespace: str, name: str, replicas: int) -> bool:
    """Set the Deployment's replica count to `replicas` if it has fewer, never lower: its scale is read and
    written back at that resourceVersion, so that a count the autoscaler raised meanwhile is not undone (a
    conflict reads again). Whether it had fewer."""
    apps = client.AppsV1Api(api_client())
    for attempt in range(SCALE_ATTEMPTS):
        scale = apps.read_namespaced_deployment_scale(name, namespace)
        spec = scale.spec or client.V1ScaleSpec()
        if (spec.replicas or 0) >= replicas:
            return False
        spec.replicas, scale.spec = replicas, spec
        try:
            apps.replace_namespaced_deployment_scale(name, namespace, scale, field_manager="tollway-burst")
        except ApiException as error:
            if error.status == 409 and attempt + 1 < SCALE_ATTEMPTS:
                continue
            raise
        return True
    return False
