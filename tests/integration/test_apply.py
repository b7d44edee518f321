"""The apply layer's discovery against the real API server: kinds the cluster does not serve (KEDA's or
prometheus-operator's when absent) are asked about every reconcile, and must not cost a rediscovery each."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.config import kube_config

from tollway.k8s import apply

from testbed.kube import Cluster


def test_an_unserved_kind_costs_one_rediscovery_per_recheck_interval(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The kubernetes package reads $KUBECONFIG when imported: point its default at this cluster instead.
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(cluster.kubeconfig))
    discovery = apply._dynamic().resources
    rediscoveries = []
    real = discovery.invalidate_cache

    def counted() -> Any:  # a spy: the real rediscovery runs, and is counted
        rediscoveries.append(1)
        return real()

    monkeypatch.setattr(discovery, "invalidate_cache", counted)
    for _ in range(5):
        assert not apply.served("nothing.tollway.test/v1", "Nothing")
    assert len(rediscoveries) == 1
    assert apply.served("apps/v1", "Deployment")
    assert len(rediscoveries) == 1
    with pytest.raises(apply.ApplyError, match=r"does not serve nothing\.tollway\.test/v1 Nothing"):
        apply.read({"apiVersion": "nothing.tollway.test/v1", "kind": "Nothing", "metadata": {"name": "x"}})


def test_a_child_the_watch_shows_unchanged_is_not_read_again(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Applier reads a child only when the watch's resourceVersion differs from the one it last found
    current, or when the rendering changed: an edit by hand, seen by the watch, is still undone."""
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(cluster.kubeconfig))
    namespace = cluster.namespace("apply-watched")
    watched: dict[str, str] = {}  # what kopf's index of ConfigMaps would hold: name → resourceVersion
    applier = apply.Applier(lambda manifest: watched.get(manifest["metadata"]["name"], apply.UNSEEN))
    reads = []
    real_read = apply.read

    def counted(manifest: Any) -> Any:  # a spy: the real read runs, and is counted
        reads.append(manifest["metadata"]["name"])
        return real_read(manifest)

    monkeypatch.setattr(apply, "read", counted)
    manifest = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "rendered", "namespace": namespace},
        "data": {"model": "chat"},
    }

    def live() -> dict[str, Any]:
        return cluster.get("configmap", "rendered", namespace)

    assert applier.apply(manifest) and not reads  # unseen by the watch: new, so applied without a read
    assert applier.is_current(live())  # its watch event is the echo of that write: no reconcile
    made = live()["metadata"]["resourceVersion"]
    assert applier.apply(manifest) and not reads  # the watch lags: applied again, which changes nothing
    assert live()["metadata"]["resourceVersion"] == made  # and writes nothing
    watched["rendered"] = made
    assert not applier.apply(manifest) and not reads  # watched at the version found current: no read

    cluster.patch("configmap", "rendered", namespace, {"data": {"model": "edited by hand"}})
    assert not applier.is_current(live())  # news: its event reconciles
    watched["rendered"] = live()["metadata"]["resourceVersion"]
    assert applier.apply(manifest) and len(reads) == 1  # the watch shows a change: read, and restored
    assert live()["data"] == {"model": "chat"}

    watched["rendered"] = live()["metadata"]["resourceVersion"]
    assert not applier.apply(manifest) and len(reads) == 1
    changed = {**manifest, "data": {"model": "chat-v2"}}
    assert applier.apply(changed) and len(reads) == 2  # a new rendering: read, and sent
    assert live()["data"] == {"model": "chat-v2"}
