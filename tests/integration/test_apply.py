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
