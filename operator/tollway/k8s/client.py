"""One configured API client for the process: in-cluster when running in a pod, else the kubeconfig."""

from __future__ import annotations

from functools import cache

from kubernetes import client, config

RECONCILE_THREADS = 20
"""The reconciler's threads (`handlers`): reconciles wait on the API server most of the time."""


@cache
def api_client() -> client.ApiClient:
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    configuration = client.Configuration.get_default_copy()
    # A connection for each reconcile thread, the resync's and the status writer's: the default (5 per
    # core) is fewer, and each request past it opens a new TLS connection, then throws it away.
    configuration.connection_pool_maxsize = RECONCILE_THREADS + 4
    return client.ApiClient(configuration)


def custom_objects() -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client())
