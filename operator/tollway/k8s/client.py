"""One configured API client for the process: in-cluster when running in a pod, else the kubeconfig."""

from __future__ import annotations

from functools import cache

from kubernetes import client, config


@cache
def api_client() -> client.ApiClient:
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def custom_objects() -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client())
