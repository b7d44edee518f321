"""The reconciles against a fake cluster, fake Triton and Prometheus and a fake clock: coalescing, the resync,
the burst floor's loop, the status write races, and the watch cache the reconciles read their namespace
from."""

from __future__ import annotations

import base64
import copy
import itertools
import json
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pytest

from tollway.api import ApiTier, ModelDeployment, Resource
from tollway.ir.state import (
    DeploymentState,
    KeyAlertState,
    KeyPattern,
    MetricsState,
    PodProblem,
    ReadyPod,
    SlaCounts,
    SlaState,
    TritonState,
    UsageState,
)
from tollway.k8s.apply import ApplyError
from tollway.k8s.cache import Seen, WatchCache, index_id
from tollway.reconcile import Burst, Reconciler, Resync
from tollway.reconcile.coalesce import Coalescer
from tollway.settings import Settings

from builders import api_tier, model_deployment

LOG = logging.getLogger("test-reconcile")
PROMETHEUS = "http://prometheus.test:9090"
Body = dict[str, Any]


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


class FakeCluster:
    """An API server in a dict. `calls` counts every method called; `writes` lists what was written."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], Body] = {}
        self.children: dict[tuple[str, str, str], str] = {}
        self.calls: Counter[str] = Counter()
        self.writes: list[str] = []
        self.events: list[str] = []
        self.pruned: list[str] = []
        self.unlistable: set[str | None] = set()
        self.broken_models: set[str] = set()
        self.peers: dict[str, dict[str, Any]] | None = {}
        self.peering_asked: list[str | None] = []
        """The scope of each read of kopf's peering object: a namespace, or None (the cluster's)."""
        self.key_secrets: dict[str, Body] = {}
        """The namespace's API-key Secrets (someone else's: only their labels and annotations are marked)."""
        self.deployments: dict[str, DeploymentState] = {}
        """As the watch shows them."""
        self.scaled: dict[str, int] = {}
        """Replica counts set since (by the HPA, or the burst floor), which the watch does not show yet."""
        self.pods: dict[tuple[str, str], tuple[ReadyPod, ...]] = {}
        self.on_apply: Callable[[list[Mapping[str, Any]]], None] = lambda manifests: None
        self.on_status: Callable[[], None] = lambda: None
        self._uids = itertools.count(1)

    def add(self, body: Body) -> Body:
        body = copy.deepcopy(body)
        body["metadata"].setdefault("uid", f"uid-{next(self._uids)}")
        self.objects[_key(body)] = body
        return copy.deepcopy(body)

    def status_of(self, kind: type[Resource], name: str, namespace: str = "ai") -> Body:
        return dict(self.objects[(kind.kind_name, namespace, name)].get("status") or {})

    def _count(self, name: str) -> None:
        self.calls[name] += 1

    def list_resources(self, kind: type[Resource], namespace: str | None) -> list[Body]:
        self._count("list_resources")
        if namespace in self.unlistable:
            raise ConnectionError("the API server is away")
        return [copy.deepcopy(body) for key, body in self.objects.items() if key[0] == kind.kind_name]

    def cached_resources(self, kind: type[Resource], namespace: str) -> list[Body]:
        self._count("cached_resources")
        return [
            copy.deepcopy(body)
            for (kind_name, where, _), body in self.objects.items()
            if (kind_name, where) == (kind.kind_name, namespace)
        ]

    def cached_resource(self, kind: type[Resource], namespace: str, name: str) -> Body | None:
        self._count("cached_resource")
        found = self.objects.get((kind.kind_name, namespace, name))
        return copy.deepcopy(found) if found is not None else None

    def read_resource(self, kind: type[Resource], namespace: str, name: str) -> Body | None:
        self._count("read_resource")
        found = self.objects.get((kind.kind_name, namespace, name))
        return copy.deepcopy(found) if found is not None else None

    def list_secrets(self, namespace: str) -> list[Body]:
        """The Secrets applied so far (the generated ones among them: they must come back unchanged)."""
        self._count("list_secrets")
        generated = [
            json.loads(content)
            for (kind, where, _), content in self.children.items()
            if (kind, where) == ("Secret", namespace)
        ]
        return generated + copy.deepcopy(list(self.key_secrets.values()))

    def generated_secret(self, namespace: str, name: str) -> Body | None:
        self._count("generated_secret")
        content = self.children.get(("Secret", namespace, name))
        return json.loads(content) if content is not None else None

    def mark_secret(
        self,
        namespace: str,
        name: str,
        labels: Mapping[str, str | None],
        annotations: Mapping[str, str | None],
    ) -> None:
        self._count("mark_secret")
        metadata = self.key_secrets[name]["metadata"]
        for field_name, changes in (("labels", labels), ("annotations", annotations)):
            values = {**metadata.get(field_name, {}), **changes}
            metadata[field_name] = {key: value for key, value in values.items() if value is not None}
        self.writes.append(f"Secret/{name}/marked")

    def deployment_state(self, namespace: str, name: str) -> DeploymentState | None:
        self._count("deployment_state")
        if name.removesuffix("-triton") in self.broken_models:
            raise ConnectionError(f"cannot read {name}")
        return self.deployments.get(name)

    def pod_problems(self, namespace: str, model: str) -> tuple[PodProblem, ...]:
        self._count("pod_problems")
        return ()

    def ready_pods(self) -> dict[tuple[str, str], tuple[ReadyPod, ...]]:
        return dict(self.pods)

    def raise_replicas(self, namespace: str, name: str, replicas: int) -> bool:
        live = self.scaled.get(name, self.deployments[name].replicas)
        if live >= replicas:
            return False
        self.scaled[name] = replicas
        self.writes.append(f"Deployment/{name}/scale={replicas}")
        return True

    def served(self, api_version: str, kind: str) -> bool:
        return False

    def apply_all(self, manifests: Iterable[Mapping[str, Any]]) -> int:
        self._count("apply_all")
        manifests = list(manifests)
        self.on_apply(manifests)
        sent = 0
        for manifest in manifests:
            key = (manifest["kind"], manifest["metadata"].get("namespace", ""), manifest["metadata"]["name"])
            content = json.dumps(manifest, sort_keys=True)
            if self.children.get(key) != content:
                self.children[key] = content
                self.writes.append(f"{key[0]}/{key[2]}")
                sent += 1
        return sent

    def is_current(self, child: Mapping[str, Any]) -> bool:
        return False

    def prune(
        self, namespace: str, owner_uid: str, model: str, kinds: Iterable[tuple[str, str]]
    ) -> list[str]:
        self.pruned.append(model)
        return []

    def prune_named(
        self, namespace: str, owner: str, label_selector: str, stale: Iterable[tuple[str, str, str]]
    ) -> list[str]:
        return []

    def apply_status(
        self, kind: type[Resource], metadata: Mapping[str, Any], status: Mapping[str, Any]
    ) -> bool:
        self.on_status()
        found = self.objects.get((kind.kind_name, metadata["namespace"], metadata["name"]))
        if found is None:
            return False
        found["status"] = {**(found.get("status") or {}), **copy.deepcopy(dict(status))}
        self.writes.append(f"{kind.kind_name}/{metadata['name']}/status")
        return True

    def record_event(
        self,
        kind: type[Resource],
        metadata: Mapping[str, Any],
        *,
        type: Literal["Normal", "Warning"],
        reason: str,
        note: str,
    ) -> None:
        self.events.append(f"{metadata['name']}: {type} {reason}")

    def peering_peers(self, name: str, namespace: str | None) -> dict[str, dict[str, Any]]:
        self.peering_asked.append(namespace)
        if self.peers is None:
            raise ConnectionError("cannot read the peering object")
        return self.peers


class FakeTelemetry:
    def __init__(self) -> None:
        self.metrics = MetricsState(reachable=True, values={"p99_ms": 40.0})
        self.sla = SlaState(reachable=True, counts=SlaCounts(requests=2000, errors=30, input_tokens=10**6))
        self.asked: list[str] = []
        self.key_alerts_state = KeyAlertState(reachable=True)
        self.posted: list[dict[str, Any]] = []
        self.queues: dict[str, float | None] = {}
        """Each pod's metrics page (by URL): the requests waiting there; None or missing: unreadable."""

    def model_state(self, url: str, model: str, versions: Iterable[str], admin_key: str) -> TritonState:
        self.asked.append(f"triton {model}")
        return TritonState(reachable=False, error="no Triton in a unit test")

    def model_metrics(self, url: str, namespace: str, model: str) -> MetricsState:
        self.asked.append(f"metrics {model}")
        return self.metrics

    def queue_depth(self, url: str, model: str) -> float | None:
        return self.queues.get(url)

    def tier_usage(self, url: str, namespace: str, tier: str, since_seconds: int) -> UsageState:
        self.asked.append(f"usage {tier}")
        return UsageState(reachable=True, requests=3)

    def tier_sla(self, url: str, namespace: str, tier: str, start: int, end: int) -> SlaState:
        self.asked.append(f"sla {tier} {datetime.fromtimestamp(start, UTC):%Y-%m-%d}")
        return self.sla

    def key_alerts(self, url: str, namespace: str) -> KeyAlertState:
        self.asked.append(f"key alerts {namespace}")
        return self.key_alerts_state

    def post_alerts(self, url: str, alerts: list[dict[str, Any]]) -> str:
        self.posted += alerts
        return ""


def _key(body: Mapping[str, Any]) -> tuple[str, str, str]:
    return (body["kind"], body["metadata"]["namespace"], body["metadata"]["name"])


class Bed:
    """A reconciler on fakes, and its resync (whose loop body the tests call)."""

    def __init__(self, **settings: Any) -> None:
        self.cluster, self.telemetry, self.clock = FakeCluster(), FakeTelemetry(), FakeClock()
        self.reconciler = Reconciler(
            Settings(**{"namespaces": ("ai",), **settings}), self.cluster, self.telemetry, self.clock
        )
        self.resync = Resync(self.reconciler, LOG)
        self.burst = Burst(self.reconciler, Settings.triton_metrics_url or "", LOG)
        self.monotonic = 1000.0
        self.reconciler.floors.monotonic = lambda: self.monotonic

    def event(self, body: Body) -> None:
        kind = ModelDeployment if body["kind"] == ModelDeployment.kind_name else ApiTier
        self.reconciler.resource_changed(kind, body, LOG)


@pytest.fixture
def bed() -> Bed:
    return Bed()


def conditions(status: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    return {item["type"]: (item["status"], item["reason"]) for item in status.get("conditions", [])}


class Gate:
    """Holds the first apply until released: the test acts while that reconcile runs."""

    def __init__(self, cluster: FakeCluster) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        self._held = False
        cluster.on_apply = self._hold

    def _hold(self, manifests: list[Mapping[str, Any]]) -> None:
        if not self._held:
            self._held = True
            self.entered.set()
            assert self.release.wait(10), "the test never released the reconcile"


@contextmanager
def in_thread(run: Callable[[], None]) -> Iterator[None]:
    """Run `run` on another thread; on leaving the block, join it and raise what it raised."""
    failures: list[BaseException] = []

    def target() -> None:
        try:
            run()
        except BaseException as error:  # handed to the test's thread
            failures.append(error)

    thread = threading.Thread(target=target)
    thread.start()
    yield
    thread.join(10)
    assert not thread.is_alive()
    if failures:
        raise failures[0]


def edited(body: Body, **spec: Any) -> Body:
    """`body` as the API server holds it after a spec edit: its generation moves on."""
    changed = copy.deepcopy(body)
    changed["spec"].update(spec)
    changed["metadata"]["generation"] += 1
    return changed


# Coalescing


def test_events_during_a_reconcile_collapse_into_one_rerun_on_the_latest_state(bed: Bed) -> None:
    body = bed.cluster.add(model_deployment("chat"))
    gate = Gate(bed.cluster)
    with in_thread(lambda: bed.reconciler.reconcile(ModelDeployment, body, LOG)):
        assert gate.entered.wait(10)
        bed.cluster.add(edited(body, aliases={"stable": "1"}))
        for _ in range(3):  # each returns at once: the running reconcile takes them over
            bed.reconciler.reconcile(ModelDeployment, body, LOG)
        assert bed.cluster.calls["apply_all"] == 1
        gate.release.set()
    assert bed.cluster.calls["apply_all"] == 2  # one re-run for the three requests
    assert bed.cluster.status_of(ModelDeployment, "chat")["observedGeneration"] == 2  # on the latest state


def test_another_object_is_reconciled_while_one_is_held(bed: Bed) -> None:
    chat = bed.cluster.add(model_deployment("chat"))
    embed = bed.cluster.add(model_deployment("embed"))
    gate = Gate(bed.cluster)
    with in_thread(lambda: bed.reconciler.reconcile(ModelDeployment, chat, LOG)):
        assert gate.entered.wait(10)
        bed.reconciler.reconcile(ModelDeployment, embed, LOG)
        assert "ModelDeployment/embed/status" in bed.cluster.writes
        gate.release.set()


def test_an_object_deleted_during_its_reconcile_is_not_run_again(bed: Bed) -> None:
    body = bed.cluster.add(model_deployment("chat"))
    gate = Gate(bed.cluster)
    with in_thread(lambda: bed.reconciler.reconcile(ModelDeployment, body, LOG)):
        assert gate.entered.wait(10)
        del bed.cluster.objects[_key(body)]
        bed.reconciler.reconcile(ModelDeployment, body, LOG)
        gate.release.set()
    assert bed.cluster.calls["apply_all"] == 1
    recreated = bed.cluster.add(model_deployment("chat"))
    bed.reconciler.reconcile(ModelDeployment, recreated, LOG)  # the object is free again
    assert bed.cluster.calls["apply_all"] == 2


def test_a_failed_reconcile_is_logged_for_its_object_and_leaves_it_free_for_the_next(
    bed: Bed, caplog: pytest.LogCaptureFixture
) -> None:
    body = bed.cluster.add(model_deployment("chat"))

    def fail_once(manifests: list[Mapping[str, Any]]) -> None:
        bed.cluster.on_apply = lambda manifests: None
        raise ConnectionError("the API server went away")

    bed.cluster.on_apply = fail_once
    with caplog.at_level(logging.ERROR):
        bed.reconciler.reconcile(ModelDeployment, body, LOG)
    failures = [record.exc_info[1] for record in caplog.records if record.exc_info]
    assert len(failures) == 1 and isinstance(failures[0], ConnectionError)
    assert "ModelDeployment/chat/status" not in bed.cluster.writes
    bed.reconciler.reconcile(ModelDeployment, body, LOG)
    assert "ModelDeployment/chat/status" in bed.cluster.writes


# The resync


def settled(bed: Bed) -> None:
    """A model and a tier, reconciled from their watch events until nothing changes."""
    for body in (bed.cluster.add(model_deployment("chat")), bed.cluster.add(api_tier("pro"))):
        bed.event(body)
    for body in list(bed.cluster.objects.values()):
        bed.event(copy.deepcopy(body))  # the watch events of the status writes


def test_a_resync_of_settled_resources_writes_nothing(bed: Bed) -> None:
    settled(bed)
    written, events, applies = (
        len(bed.cluster.writes),
        len(bed.cluster.events),
        bed.cluster.calls["apply_all"],
    )
    bed.clock.now += timedelta(seconds=30)
    bed.resync.resync()
    assert bed.cluster.calls["apply_all"] == applies + 2  # the model's children and the gateway's, read
    assert bed.cluster.writes[written:] == []
    assert bed.cluster.events[events:] == []


def test_a_resync_waits_for_the_first_watch_event(bed: Bed) -> None:
    """Until kopf has handed over a watch event its indexes may be empty: a resync then does nothing."""
    bed.cluster.add(model_deployment("chat"))
    bed.resync.resync()
    assert bed.cluster.calls == Counter()
    bed.event(bed.cluster.add(model_deployment("embed")))
    bed.resync.resync()
    assert bed.cluster.calls["list_resources"] == 2


def test_a_failed_list_is_survived_and_the_next_resync_lists_again() -> None:
    bed = Bed(namespaces=("down", "ai"))
    bed.event(bed.cluster.add(model_deployment("chat")))
    bed.cluster.writes.clear()
    bed.cluster.unlistable = {"down"}
    bed.resync.resync()  # no exception: the other namespace is resynced
    assert bed.cluster.calls["list_resources"] == 3  # "down" once (failed), "ai" for models and tiers
    bed.cluster.unlistable = set()
    bed.resync.resync()
    assert bed.cluster.calls["list_resources"] == 7


def test_one_failing_reconcile_does_not_stop_the_resync_of_the_others(bed: Bed) -> None:
    bed.event(bed.cluster.add(model_deployment("chat")))
    bed.cluster.add(model_deployment("embed"))
    bed.cluster.broken_models = {"chat"}
    bed.resync.resync()
    assert "ModelDeployment/embed/status" in bed.cluster.writes


def test_a_replica_outranked_by_a_live_peer_does_not_resync() -> None:
    bed = Bed(peering="tollway", peering_priority=1)
    bed.event(bed.cluster.add(model_deployment("chat")))
    seen = (bed.clock.now - timedelta(seconds=5)).isoformat()
    bed.cluster.peers = {"newer": {"priority": 2, "lastseen": seen, "lifetime": 60}}
    before = bed.cluster.calls["list_resources"]
    bed.resync.resync()
    assert bed.cluster.calls["list_resources"] == before
    bed.clock.now += timedelta(seconds=120)  # the peer's keep-alives stopped
    bed.resync.resync()
    assert bed.cluster.calls["list_resources"] == before + 2
    bed.cluster.peers = None  # unreadable: skip rather than risk two writers
    bed.resync.resync()
    assert bed.cluster.calls["list_resources"] == before + 2


# The burst floor


def autoscaled(bed: Bed, replicas: int, waiting: float | None) -> Body:
    """A model that scales on its queue (4 a replica, 1 to 8), with `replicas`, each ready and `waiting`
    requests between them (read from the first pod's metrics page)."""
    autoscaling = {"minReplicas": 1, "maxReplicas": 8, "targets": {"queueDepthPerReplica": 4}}
    body = bed.cluster.add(model_deployment("chat", **{"spec.autoscaling": autoscaling}))
    bed.cluster.deployments["chat-triton"] = deployment(replicas)
    pods = tuple(ReadyPod(f"chat-triton-{index}", f"10.0.0.{index}") for index in range(replicas))
    bed.cluster.pods[("ai", "chat")] = pods
    bed.telemetry.queues = {f"http://10.0.0.{index}:8002/metrics": 0.0 for index in range(replicas)}
    bed.telemetry.queues["http://10.0.0.0:8002/metrics"] = waiting
    bed.event(body)
    return body


def deployment(replicas: int) -> DeploymentState:
    """A Deployment at rest with `replicas`, every one ready."""
    return DeploymentState(1, 1, replicas, replicas, replicas, replicas)


def hpa_minimum(bed: Bed) -> int:
    hpa = json.loads(bed.cluster.children[("HorizontalPodAutoscaler", "ai", "chat-triton")])
    return int(hpa["spec"]["minReplicas"])


def test_a_burst_sets_the_replicas_at_once_and_holds_them_as_the_hpas_minimum_for_a_while() -> None:
    bed = Bed()
    autoscaled(bed, replicas=1, waiting=30)  # asks for 8 (30 / 4, at most 8) on 1
    assert hpa_minimum(bed) == 1
    bed.burst.look()
    assert "Deployment/chat-triton/scale=8" in bed.cluster.writes
    assert hpa_minimum(bed) == 8  # the HPA's next sync, on older figures, cannot take them back
    assert bed.cluster.events[-1] == "chat: Normal BurstScaledUp"
    bed.cluster.deployments["chat-triton"] = deployment(8)  # the watch catches up
    bed.monotonic += 29
    bed.burst.look()
    assert hpa_minimum(bed) == 8
    bed.monotonic += 2  # the hold (30 s) is over: the HPA's own minimum again, and its rules from here
    bed.burst.look()
    assert hpa_minimum(bed) == 1
    assert bed.cluster.writes.count("Deployment/chat-triton/scale=8") == 1


def test_the_loop_reads_a_models_spec_anew_once_it_changes() -> None:
    bed = Bed()
    body = autoscaled(bed, replicas=1, waiting=30)
    bed.burst.look()
    assert "Deployment/chat-triton/scale=8" in bed.cluster.writes
    bed.cluster.deployments["chat-triton"] = deployment(8)
    bed.monotonic += 31
    bed.burst.look()  # the floor lapses
    autoscaling = {"minReplicas": 1, "maxReplicas": 4, "targets": {"queueDepthPerReplica": 4}}
    bed.cluster.add(edited(body, autoscaling=autoscaling))
    bed.cluster.deployments["chat-triton"] = deployment(1)  # back at 1 replica
    bed.cluster.scaled.clear()
    bed.burst.look()
    assert bed.cluster.scaled["chat-triton"] == 4  # the new maxReplicas


@pytest.mark.parametrize(
    ("replicas", "waiting"),
    [
        (1, 4),  # asks for 1: no more than it has
        (3, 20),  # asks for 5: less than twice its 3, the HPA's next sync is soon enough
        (2, None),  # no pod's queue could be read
    ],
)
def test_no_burst_no_floor(replicas: int, waiting: float | None) -> None:
    bed = Bed()
    autoscaled(bed, replicas, waiting)
    writes = list(bed.cluster.writes)
    bed.burst.look()
    assert bed.cluster.writes == writes and hpa_minimum(bed) == 1


def test_a_count_raised_already_is_left_as_it_is() -> None:
    bed = Bed()
    autoscaled(bed, replicas=1, waiting=30)
    bed.cluster.scaled["chat-triton"] = 8  # by the HPA, just now: the watch still shows 1
    bed.burst.look()
    assert not any(write.startswith("Deployment/chat-triton/scale") for write in bed.cluster.writes)
    assert hpa_minimum(bed) == 8  # rendered before the count is read: the burst's ask holds all the same
    assert bed.cluster.events[-1] == "chat: Normal BurstScaledUp"


def test_a_model_whose_scale_cannot_be_raised_still_gets_its_floor() -> None:
    bed = Bed()
    autoscaled(bed, replicas=1, waiting=30)

    def refused(namespace: str, name: str, replicas: int) -> bool:
        raise ConnectionError("the API server is away")

    bed.cluster.raise_replicas = refused  # type: ignore[method-assign]
    bed.burst.look()  # logs, does not raise
    assert hpa_minimum(bed) == 8  # the HPA raises the count itself at its next sync


def test_a_spec_with_a_scale_up_window_of_its_own_gets_no_floor() -> None:
    bed = Bed()
    body = autoscaled(bed, replicas=1, waiting=30)
    waiting = {
        "minReplicas": 1,
        "maxReplicas": 8,
        "targets": {"queueDepthPerReplica": 4},
        "scaleUp": {"stabilizationSeconds": 60},
    }
    bed.event(bed.cluster.add(edited(body, autoscaling=waiting)))
    bed.burst.look()
    assert "Deployment/chat-triton/scale=8" not in bed.cluster.writes and hpa_minimum(bed) == 1


@pytest.mark.parametrize(("namespaces", "scope"), [(("ai",), "ai"), ((), None)])
def test_the_floor_asks_the_peering_object_the_resync_asks(
    namespaces: tuple[str, ...], scope: str | None
) -> None:
    bed = Bed(namespaces=namespaces, peering="tollway", peering_priority=1)
    autoscaled(bed, replicas=1, waiting=30)
    bed.burst.look()
    assert bed.cluster.peering_asked == [scope]  # once a pass, before any page is read
    assert "Deployment/chat-triton/scale=8" in bed.cluster.writes


def test_a_replica_outranked_by_a_live_peer_raises_nothing() -> None:
    bed = Bed(peering="tollway", peering_priority=1)
    autoscaled(bed, replicas=1, waiting=30)
    seen = (bed.clock.now - timedelta(seconds=5)).isoformat()
    bed.cluster.peers = {"newer": {"priority": 2, "lastseen": seen, "lifetime": 60}}
    bed.burst.look()
    assert "Deployment/chat-triton/scale=8" not in bed.cluster.writes and hpa_minimum(bed) == 1


# Status writes racing other writers


def test_a_stale_event_does_not_write_over_a_newer_status(bed: Bed) -> None:
    body = bed.cluster.add(model_deployment("chat"))
    bed.reconciler.reconcile(ModelDeployment, body, LOG)  # status written; `body` is now stale
    written, events = len(bed.cluster.writes), list(bed.cluster.events)
    bed.reconciler.reconcile(ModelDeployment, body, LOG)
    assert bed.cluster.writes[written:] == []
    assert bed.cluster.events == events  # no condition is announced twice


def test_no_status_for_an_object_deleted_since_its_event(bed: Bed) -> None:
    body = bed.cluster.add(model_deployment("chat"))
    del bed.cluster.objects[_key(body)]
    bed.reconciler.reconcile(ModelDeployment, body, LOG)
    assert [write for write in bed.cluster.writes if write.endswith("/status")] == []
    assert bed.cluster.events == []


def test_no_events_for_an_object_deleted_during_the_status_write(bed: Bed) -> None:
    body = bed.cluster.add(model_deployment("chat"))
    bed.cluster.on_status = bed.cluster.objects.clear
    bed.reconciler.reconcile(ModelDeployment, body, LOG)
    assert bed.cluster.events == []


def test_figures_prometheus_cannot_give_stay_as_the_cluster_holds_them_now() -> None:
    bed = Bed(prometheus_url=PROMETHEUS)
    old = {"p99Ms": 10.0, "observedAt": "2026-12-01T11:00:00Z"}
    newer = {"p99Ms": 20.0, "observedAt": "2026-12-01T11:59:00Z"}
    event = bed.cluster.add(model_deployment("chat", **{"status.metrics": old}))
    bed.cluster.objects[_key(event)]["status"]["metrics"] = newer  # written by another thread since
    bed.telemetry.metrics = MetricsState(reachable=False, error="connection refused")
    bed.clock.now += timedelta(minutes=5)  # the event's figures are older than a resync: ask again
    bed.reconciler.reconcile(ModelDeployment, event, LOG)
    status = bed.cluster.status_of(ModelDeployment, "chat")
    assert conditions(status)["MetricsAvailable"] == ("False", "PrometheusUnreachable")
    assert status["metrics"] == newer  # observedAt never moves back


def test_figures_younger_than_a_resync_are_not_read_again() -> None:
    bed = Bed(prometheus_url=PROMETHEUS, resync_seconds=60)
    bed.event(bed.cluster.add(model_deployment("chat")))
    assert bed.telemetry.asked == ["metrics chat"]
    observed = bed.cluster.status_of(ModelDeployment, "chat")["metrics"]["observedAt"]
    assert observed == "2026-12-01T12:00:00Z"
    bed.clock.now += timedelta(seconds=59)
    bed.resync.resync()
    assert bed.telemetry.asked == ["metrics chat"]
    bed.clock.now += timedelta(seconds=2)
    bed.resync.resync()
    assert bed.telemetry.asked == ["metrics chat", "metrics chat"]
    assert bed.cluster.status_of(ModelDeployment, "chat")["metrics"]["observedAt"] == "2026-12-01T12:01:01Z"


def test_a_tiers_usage_is_read_at_most_once_per_resync() -> None:
    bed = Bed(prometheus_url=PROMETHEUS, resync_seconds=60)
    bed.event(bed.cluster.add(api_tier("pro")))
    bed.event(bed.cluster.read_resource(ApiTier, "ai", "pro") or {})
    assert bed.telemetry.asked == ["usage pro"]
    assert bed.cluster.status_of(ApiTier, "pro")["usage"]["requests"] == 3


def test_a_tiers_sla_is_read_for_the_month_so_far_and_kept_when_prometheus_fails() -> None:
    """1.5 % of this month's requests failed: below 99 %, so 25 % of the month's cost is owed so far; when
    Prometheus stops answering, the last figures stay."""
    bed = Bed(prometheus_url=PROMETHEUS, resync_seconds=60)
    credits = [{"below": "99.9", "creditPercent": "10"}, {"below": "99", "creditPercent": "25"}]
    sla = {"availability": "99.9", "credits": credits}
    bed.event(bed.cluster.add(api_tier("pro", **{"spec.sla": sla, "spec.pricing.inputPer1kTokens": "0.002"})))
    assert bed.telemetry.asked == ["usage pro", "sla pro 2026-12-01"]
    figures = bed.cluster.status_of(ApiTier, "pro")["sla"]
    assert (figures["period"], figures["availability"], figures["errorBudgetRemaining"]) == (
        "2026-12",
        "98.5",
        "0",
    )
    assert (figures["creditPercent"], figures["credit"], figures["requests"]) == ("25", "0.5", 2000)
    bed.telemetry.sla = SlaState(reachable=False, error="ConnectionError")
    bed.clock.now += timedelta(seconds=61)
    bed.resync.resync()
    assert bed.cluster.status_of(ApiTier, "pro")["sla"] == figures


def test_a_refused_child_is_reported_and_nothing_is_pruned(bed: Bed) -> None:
    body = bed.cluster.add(model_deployment("chat"))

    def refuse(manifests: list[Mapping[str, Any]]) -> None:
        raise ApplyError("Deployment/chat-triton: spec.replicas: Invalid value")

    bed.cluster.on_apply = refuse
    bed.reconciler.reconcile(ModelDeployment, body, LOG)
    status = bed.cluster.status_of(ModelDeployment, "chat")
    assert conditions(status)["Ready"] == ("False", "ApplyFailed")
    assert conditions(status)["Degraded"] == ("True", "ApplyFailed")
    assert bed.cluster.pruned == []
    assert "chat: Warning ApplyFailed" in bed.cluster.events


# The watch cache


def test_the_gateway_does_not_depend_on_the_order_of_the_watch_cache(bed: Bed) -> None:
    """kopf indexes objects in the order it happens to process their events, which differs after a restart:
    the gateway's configuration (routes and clusters follow its models) must not, or every restart rewrites
    it and reloads Envoy (found by SIGKILLing the operator: tests/integration/test_operator_faults.py)."""
    for name in ("zeta", "alpha"):
        bed.cluster.add(model_deployment(name, **{"spec.aliases": {}}))
    tier = bed.cluster.add(api_tier("pro", **{"spec.models": ["*"]}))
    bed.event(tier)
    written = len(bed.cluster.writes)
    bed.cluster.objects = dict(reversed(bed.cluster.objects.items()))  # the same objects, indexed anew
    bed.event(tier)
    assert bed.cluster.writes[written:] == []


def test_watch_events_read_the_namespace_from_the_watch_cache(bed: Bed) -> None:
    settled(bed)
    assert bed.cluster.calls["cached_resources"] > 0
    assert bed.cluster.calls["list_resources"] == 0


def seen(name: str, uid: str, at: float, namespace: str = "ai") -> Seen:
    return Seen({"metadata": {"name": name, "namespace": namespace, "uid": uid}}, at)


def names(bodies: list[Body]) -> list[str]:
    return sorted(body["metadata"]["name"] for body in bodies)


def cache_of(*values: Seen) -> WatchCache:
    tiers: dict[str, list[Seen]] = {}
    for value in values:
        tiers.setdefault(value.body["metadata"]["namespace"], []).append(value)
    return WatchCache({index_id(ApiTier): tiers, index_id(ModelDeployment): {}})


def test_the_watch_cache_answers_by_namespace() -> None:
    cache = cache_of(seen("free", "1", 1.0), seen("pro", "2", 1.0), seen("other", "3", 1.0, namespace="b"))
    assert names(cache.resources(ApiTier, "ai")) == ["free", "pro"]
    assert cache.resources(ModelDeployment, "ai") == []


def test_what_a_later_list_no_longer_holds_leaves_the_watch_cache() -> None:
    """kopf keeps in its index an object deleted while its watch was away (paused, or re-listing)."""
    cache = cache_of(seen("gone", "1", 1.0), seen("kept", "2", 1.0), seen("newer", "3", 5.0))
    listed = [{"metadata": {"name": "kept", "namespace": "ai", "uid": "2"}}]
    cache.listed(ApiTier, None, listed, started=3.0)
    assert names(cache.resources(ApiTier, "ai")) == [
        "kept",
        "newer",
    ]  # "newer" was indexed after the list began


class Racing:
    """A kopf store that an update on the event loop's thread changes once while it is read."""

    def __init__(self, values: list[Seen]) -> None:
        self.values, self.raced = values, False

    def __iter__(self) -> Iterator[Seen]:
        if not self.raced:
            self.raced = True
            raise RuntimeError("dictionary changed size during iteration")
        return iter(self.values)


def test_a_read_of_the_watch_cache_that_races_kopf_reads_again() -> None:
    cache = WatchCache({index_id(ApiTier): {"ai": Racing([seen("pro", "1", 1.0)])}})
    assert names(cache.resources(ApiTier, "ai")) == ["pro"]


def test_the_serving_cost_is_read_with_the_metrics_and_stays_when_prometheus_fails() -> None:
    bed = Bed(prometheus_url=PROMETHEUS, resync_seconds=60)
    bed.telemetry.metrics = MetricsState(reachable=True, values={"p99_ms": 40.0}, cost={"cost_per_hour": 5.8})
    bed.event(bed.cluster.add(model_deployment("chat", **{"spec.cost": {"gpuHourPrice": "5.40"}})))
    read = bed.cluster.status_of(ModelDeployment, "chat")["cost"]
    assert read == {"costPerHour": "5.8", "currency": "USD", "observedAt": "2026-12-01T12:00:00Z"}
    bed.clock.now += timedelta(seconds=30)  # younger than a resync: kept as read, not asked again
    bed.resync.resync()
    assert bed.cluster.status_of(ModelDeployment, "chat")["cost"] == read
    bed.telemetry.metrics = MetricsState(reachable=False, error="connection refused")
    bed.clock.now += timedelta(minutes=5)
    bed.resync.resync()
    status = bed.cluster.status_of(ModelDeployment, "chat")
    assert conditions(status)["MetricsAvailable"] == ("False", "PrometheusUnreachable")
    assert status["cost"] == read


# Key suspension


def key_secret(name: str, consumer: str, **labels: str) -> Body:
    metadata = {"name": name, "namespace": "ai", "labels": {"tollway.dev/tier": "pro", **labels}}
    if consumer != name:
        metadata["labels"]["tollway.dev/consumer"] = consumer
    key = base64.b64encode(f"sk-{name}".encode()).decode()
    return {"apiVersion": "v1", "kind": "Secret", "metadata": metadata, "data": {"api-key": key}}


def key_events(bed: Bed) -> list[str]:
    return [event for event in bed.cluster.events if " Key" in event]


STOLEN = KeyPattern(networks=40, new_networks=38, agents=3)


def suspending_bed(suspend: bool = True) -> Bed:
    bed = Bed(prometheus_url=PROMETHEUS)
    bed.cluster.add(api_tier(**{"spec.auth.apiKeys.suspendOnCompromise": suspend}))
    bed.cluster.key_secrets["acme-key"] = key_secret("acme-key", "acme.eu")
    bed.cluster.key_secrets["other-key"] = key_secret("other-key", "other")
    return bed


def gateway_config(bed: Bed) -> str:
    """Envoy's listeners as the gateway's config Secret holds them (the Lua data, suspensions among it)."""
    secret = json.loads(bed.cluster.children[("Secret", "ai", "tollway-gateway-envoy")])
    return base64.b64decode(secret["data"]["lds.yaml"]).decode()


def test_a_key_whose_alert_fires_is_suspended_with_an_event_a_status_count_and_a_401_in_envoy() -> None:
    bed = suspending_bed()
    bed.telemetry.key_alerts_state = KeyAlertState(reachable=True, firing={("pro", "acme%2Eeu"): STOLEN})
    bed.reconciler.reconcile_gateway("ai", LOG)
    marked = bed.cluster.key_secrets["acme-key"]["metadata"]
    assert marked["labels"]["tollway.dev/suspended"] == "true"
    assert marked["annotations"]["tollway.dev/suspended-reason"] == (
        "used from 40 networks (38 new to it) and 3 user agents in an hour"
    )
    assert marked["annotations"]["tollway.dev/suspended-at"] == "2026-12-01T12:00:00Z"
    assert "tollway.dev/suspended" not in bed.cluster.key_secrets["other-key"]["metadata"]["labels"]
    assert key_events(bed) == ["pro: Warning KeySuspended"]
    assert bed.cluster.status_of(ApiTier, "pro")["suspendedKeys"] == 1
    assert "used from 40 networks (38 new to it)" in gateway_config(bed)  # rendered in the same reconcile
    bed.reconciler.reconcile_gateway("ai", LOG)  # still firing: already suspended, nothing more
    assert bed.cluster.calls["mark_secret"] == 1 and key_events(bed) == ["pro: Warning KeySuspended"]


def test_a_lifted_suspension_holds_while_the_alert_fires_and_is_cleared_once_it_stops() -> None:
    bed = suspending_bed()
    bed.cluster.key_secrets["acme-key"] = key_secret(
        "acme-key", "acme.eu", **{"tollway.dev/suspended": "lifted"}
    )
    bed.telemetry.key_alerts_state = KeyAlertState(reachable=True, firing={("pro", "acme%2Eeu"): STOLEN})
    bed.reconciler.reconcile_gateway("ai", LOG)
    assert bed.cluster.key_secrets["acme-key"]["metadata"]["labels"]["tollway.dev/suspended"] == "lifted"
    assert bed.cluster.status_of(ApiTier, "pro")["suspendedKeys"] == 0
    assert "used from 40 networks" not in gateway_config(bed)
    bed.telemetry.key_alerts_state = KeyAlertState(reachable=True)
    bed.reconciler.reconcile_gateway("ai", LOG)
    assert "tollway.dev/suspended" not in bed.cluster.key_secrets["acme-key"]["metadata"]["labels"]
    assert key_events(bed) == ["pro: Normal KeyWatchedAgain"]


def test_a_suspension_without_the_keys_figures_says_which_alert_fired() -> None:
    bed = suspending_bed()
    bed.telemetry.key_alerts_state = KeyAlertState(reachable=True, firing={("pro", "other"): KeyPattern()})
    bed.reconciler.reconcile_gateway("ai", LOG)
    marked = bed.cluster.key_secrets["other-key"]["metadata"]["annotations"]
    assert (
        marked["tollway.dev/suspended-reason"]
        == "its pattern of use changed abruptly (TollwayKeyPatternChanged)"
    )


def test_a_tier_that_does_not_suspend_leaves_its_keys_alone_and_prometheus_unasked() -> None:
    bed = suspending_bed(suspend=False)
    bed.telemetry.key_alerts_state = KeyAlertState(reachable=True, firing={("pro", "acme%2Eeu"): STOLEN})
    bed.reconciler.reconcile_gateway("ai", LOG)
    assert bed.cluster.calls["mark_secret"] == 0 and "key alerts ai" not in bed.telemetry.asked


def test_an_unreachable_prometheus_suspends_nothing_and_serves_on() -> None:
    bed = suspending_bed()
    bed.telemetry.key_alerts_state = KeyAlertState(reachable=False, error="ConnectionError: refused")
    bed.reconciler.reconcile_gateway("ai", LOG)
    assert bed.cluster.calls["mark_secret"] == 0
    assert ("Secret", "ai", "tollway-gateway-envoy") in bed.cluster.children


def test_alertmanager_hears_of_each_suspended_key_on_every_gateway_reconcile_until_it_is_lifted() -> None:
    bed = Bed(prometheus_url=PROMETHEUS, alertmanager_url="http://alertmanager.test:9093")
    bed.cluster.add(api_tier())
    reason = {"tollway.dev/suspended": "true"}
    bed.cluster.key_secrets["acme-key"] = key_secret("acme-key", "acme.eu", **reason)
    bed.cluster.key_secrets["acme-key"]["metadata"]["annotations"] = {
        "tollway.dev/suspended-reason": "stolen"
    }
    bed.cluster.key_secrets["other-key"] = key_secret("other-key", "other")
    bed.reconciler.reconcile_gateway("ai", LOG)
    assert [alert["labels"] for alert in bed.telemetry.posted] == [
        {
            "alertname": "TollwayKeySuspended",
            "namespace": "ai",
            "tier": "pro",
            "consumer": "acme%2Eeu",
            "secret": "acme-key",
            "severity": "page",
        }
    ]
    alert = bed.telemetry.posted[0]
    assert alert["annotations"]["summary"] == "an API key of consumer acme.eu (tier pro) is suspended: stolen"
    assert (alert["startsAt"], alert["endsAt"]) == ("2026-12-01T12:00:00Z", "2026-12-01T12:05:00Z")
    bed.reconciler.reconcile_gateway("ai", LOG)
    assert len(bed.telemetry.posted) == 2  # kept firing while suspended
    bed.cluster.key_secrets["acme-key"]["metadata"]["labels"]["tollway.dev/suspended"] = "lifted"
    bed.reconciler.reconcile_gateway("ai", LOG)
    assert len(bed.telemetry.posted) == 2  # no longer sent: Alertmanager resolves it at its endsAt


def test_once_the_operator_stops_queued_reconciles_return_at_once_and_a_running_one_is_not_rerun(
    bed: Bed,
) -> None:
    """kopf runs handlers on its threads, and the process waits for every one queued before it exits: a
    backlog of a thousand reconciles must not hold a SIGTERM up."""
    body = bed.cluster.add(model_deployment("chat"))
    gate = Gate(bed.cluster)
    with in_thread(lambda: bed.event(body)):
        assert gate.entered.wait(10)
        bed.event(edited(body, versions=[{"version": "2"}]))  # asks for a re-run
        bed.resync.stop()
        bed.event(body)  # queued behind kopf's threads: returns at once
        gate.release.set()
    assert bed.cluster.calls["apply_all"] == 1  # the re-run was dropped
    bed.resync.resync()
    assert bed.cluster.calls["apply_all"] == 1


def test_with_threads_a_request_for_a_queued_object_takes_its_place_and_a_failure_ends_no_thread() -> None:
    coalescer = Coalescer(threads=1)  # one thread: the requests run in the order they were first queued
    busy, release, done = threading.Event(), threading.Event(), threading.Event()
    ran: list[str] = []

    def hold(first: bool) -> bool:
        busy.set()
        assert release.wait(10)
        return False

    def fail(first: bool) -> bool:
        raise ConnectionError("the API server is away")

    def record(name: str) -> Callable[[bool], bool]:
        def step(first: bool) -> bool:
            ran.append(name)
            if name == "last":
                done.set()
            return False

        return step

    coalescer.run(("ModelDeployment", "ai", "held"), hold)  # takes the only thread
    assert busy.wait(10)
    coalescer.run(("ModelDeployment", "ai", "chat"), fail)
    coalescer.run(("ModelDeployment", "ai", "chat"), record("chat"))  # takes the queued request's place
    coalescer.run(("ModelDeployment", "ai", "other"), fail)  # raises on the thread, which goes on
    coalescer.run(("ModelDeployment", "ai", "last"), record("last"))
    release.set()
    assert done.wait(10)
    assert ran == ["chat", "last"]
