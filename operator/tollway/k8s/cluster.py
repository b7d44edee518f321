"""The API server as a reconcile sees it (`tollway.reconcile.Cluster`): this package's requests, and the
operator's watches: of Tollway's own resources (`cache`) and of their children (`watched`)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from tollway.api import Resource
from tollway.ir.names import MODEL_LABEL
from tollway.ir.state import DeploymentState, PodProblem, ReadyPod
from tollway.k8s import apply, events, resources, status
from tollway.k8s.cache import WatchCache
from tollway.k8s.watched import WatchedChildren


class KubeCluster:
    def __init__(self, cache: WatchCache, children: WatchedChildren) -> None:
        self.cache, self.children = cache, children
        self.applier = apply.Applier(children.version)

    def list_resources(self, kind: type[Resource], namespace: str | None) -> list[dict[str, Any]]:
        started = time.monotonic()
        items = resources.list_resources(kind, namespace)
        self.cache.listed(kind, namespace, items, started)
        return items

    def cached_resources(self, kind: type[Resource], namespace: str) -> list[dict[str, Any]]:
        return self.cache.resources(kind, namespace)

    def cached_resource(self, kind: type[Resource], namespace: str, name: str) -> dict[str, Any] | None:
        return self.cache.resource(kind, namespace, name)

    def deployment_state(self, namespace: str, name: str) -> DeploymentState | None:
        # None until the watch sees it: the Deployment controller's first status update reconciles again.
        return self.children.deployment(namespace, name)

    def pod_problems(self, namespace: str, model: str) -> tuple[PodProblem, ...]:
        return self.children.pod_problems(namespace, model)

    def ready_pods(self) -> dict[tuple[str, str], tuple[ReadyPod, ...]]:
        return self.children.ready_pods()

    def generated_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        # Not watched yet: maybe just made, and a generated value must never be drawn twice, so ask.
        return self.children.secret(namespace, name) or resources.read_secret(namespace, name)

    def apply_all(self, manifests: Iterable[Mapping[str, Any]]) -> int:
        return self.applier.apply_all(manifests)

    def is_current(self, child: Mapping[str, Any]) -> bool:
        return self.applier.is_current(child)

    def prune(
        self, namespace: str, owner_uid: str, model: str, kinds: Iterable[tuple[str, str]]
    ) -> list[str]:
        # A kind the watch shows none of is not listed (one LIST a kind a reconcile, else).
        possible = [kind for kind in kinds if self.children.may_own(*kind, namespace, model)]
        return apply.prune(namespace, owner_uid, f"{MODEL_LABEL}={model}", possible)

    read_resource = staticmethod(resources.read_resource)
    list_secrets = staticmethod(resources.list_secrets)
    mark_secret = staticmethod(resources.mark_secret)
    peering_peers = staticmethod(resources.peering_peers)
    raise_replicas = staticmethod(resources.raise_replicas)
    served = staticmethod(apply.served)

    def prune_named(
        self, namespace: str, owner: str, label_selector: str, stale: Iterable[tuple[str, str, str]]
    ) -> list[str]:
        # What the watch shows does not exist is not asked about (a read per name a reconcile, else).
        possible = [child for child in stale if self.children.may_exist(*child, namespace, owner)]
        return apply.prune_named(namespace, label_selector, possible)

    apply_status = staticmethod(status.apply_status)
    record_event = staticmethod(events.record_event)
