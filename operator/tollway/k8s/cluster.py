"""The API server as a reconcile sees it (`tollway.reconcile.Cluster`): this package's requests, and the watch
cache for the ApiTiers and ModelDeployments of a namespace."""

from __future__ import annotations

import time
from typing import Any

from tollway.api import Resource
from tollway.k8s import apply, events, resources, serving, status
from tollway.k8s.cache import WatchCache


class KubeCluster:
    def __init__(self, cache: WatchCache) -> None:
        self.cache = cache

    def list_resources(self, kind: type[Resource], namespace: str | None) -> list[dict[str, Any]]:
        started = time.monotonic()
        items = resources.list_resources(kind, namespace)
        self.cache.listed(kind, namespace, items, started)
        return items

    def cached_resources(self, kind: type[Resource], namespace: str) -> list[dict[str, Any]]:
        return self.cache.resources(kind, namespace)

    read_resource = staticmethod(resources.read_resource)
    list_secrets = staticmethod(resources.list_secrets)
    mark_secret = staticmethod(resources.mark_secret)
    peering_peers = staticmethod(resources.peering_peers)
    deployment_state = staticmethod(serving.deployment_state)
    pod_problems = staticmethod(serving.pod_problems)
    served = staticmethod(apply.served)
    apply_all = staticmethod(apply.apply_all)
    prune = staticmethod(apply.prune)
    prune_named = staticmethod(apply.prune_named)
    apply_status = staticmethod(status.apply_status)
    record_event = staticmethod(events.record_event)
