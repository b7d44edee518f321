"""The operator killed at random points while its resources change, and how it converges after each restart:
the driver that tests/integration/test_operator_faults.py (a few kills) and bench/operator_kill.py (50)
share.

Convergence is judged against the translation core itself: what `tollway render` would print for the
ModelDeployments, ApiTiers and Secrets the API server holds now, with the operator's settings on this
control plane (no prometheus-operator, so no monitoring kinds), compared child by child with what is there:

- missing:    a child the translation renders that the API server does not hold;
- stale:      a child that is there but not as rendered now (its `tollway.dev/applied-hash` annotation, the
              hash of what the operator rendered for it, is not the hash of today's rendering);
- orphaned:   a child of Tollway's (labelled managed-by tollway) that nothing renders, and whose owner,
              a model or the gateway, renders nothing any more (its owner is gone);
- duplicated: a child that nothing renders beside the ones its owner does render (a second Deployment
              for one model, an old gateway part left next to the new ones);

and every resource's status describing its current generation.
"""

from __future__ import annotations

import random
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from tollway.api import ApiTier, ModelDeployment
from tollway.ir.names import GATEWAY_NAME
from tollway.k8s.apply import HASH_ANNOTATION, stamped
from tollway.render import gateway as gateway_render
from tollway.render import serving as serving_render
from tollway.translate import translate_all

from testbed.kube import Cluster, Operator, eventually, tollway_run

MANAGED_BY = ("app.kubernetes.io/managed-by", "tollway")
MODELS = tuple(f"m{index}" for index in range(4))
TIERS = tuple(f"t{index}" for index in range(3))
KEYS = tuple(f"k{index}" for index in range(4))

Key = tuple[str, str]
"""A child: (kind, name)."""


@cache
def child_kinds(kubeconfig: Path) -> frozenset[tuple[str, str]]:
    """(apiVersion, kind) of every kind of child Tollway renders that the cluster serves (this control
    plane serves no KEDA or prometheus-operator kinds, so the operator makes none)."""
    listed = Cluster(kubeconfig).kubectl("api-resources", "--no-headers").stdout.splitlines()
    served = {(line.split()[-3], line.split()[-1]) for line in listed if line.strip()}
    possible = set(serving_render.CHILD_KINDS) | {
        (api_version, kind) for api_version, kind, _ in gateway_render.possible_children(GATEWAY_NAME)
    }
    return frozenset(possible & served)


def _resource_types(kinds: frozenset[tuple[str, str]]) -> str:
    """kubectl's comma-separated resource types for (apiVersion, kind) pairs (kind.group)."""
    types = {
        f"{kind.lower()}.{api_version.split('/')[0]}" if "/" in api_version else kind.lower()
        for api_version, kind in kinds
    }
    return ",".join(sorted(types))


def _group(document: Mapping[str, Any]) -> str:
    """What a child belongs to: its model's name, or its gateway's."""
    labels = (document.get("metadata") or {}).get("labels") or {}
    if labels.get("tollway.dev/gateway"):
        return f"gateway/{labels['tollway.dev/gateway']}"
    return f"model/{labels.get('tollway.dev/model', '?')}"


def _key(document: Mapping[str, Any]) -> Key:
    return (str(document["kind"]), str(document["metadata"]["name"]))


def expected_children(
    documents: list[dict[str, Any]], now: datetime, kinds: frozenset[tuple[str, str]]
) -> dict[Key, dict[str, Any]]:
    """What `tollway render` makes of a namespace's resources and Secrets as the API server holds them (the
    same call, `translate_all`), less the kinds the cluster does not serve, each stamped with the hash the
    operator's apply puts on it; by (kind, name)."""
    translation = translate_all(documents, now)
    manifests = [manifest for _, result in translation.resources for manifest in result.manifests]
    manifests += [manifest for gateway in translation.gateways.values() for manifest in gateway.manifests]
    return {
        _key(manifest): stamped(manifest)
        for manifest in manifests
        if (manifest["apiVersion"], manifest["kind"]) in kinds
    }


@dataclass(frozen=True)
class Divergence:
    """How the children in the API server differ from what the translation renders; each a sorted list of
    "Kind/name"."""

    missing: tuple[str, ...] = ()
    stale: tuple[str, ...] = ()
    orphaned: tuple[str, ...] = ()
    duplicated: tuple[str, ...] = ()
    unobserved: tuple[str, ...] = ()
    """Resources whose status does not describe their current generation."""

    def __bool__(self) -> bool:
        return bool(self.missing or self.stale or self.orphaned or self.duplicated or self.unobserved)


def divergence(cluster: Cluster, namespace: str) -> Divergence:
    """The namespace's children and resources now (one kubectl call) against the translation of them."""
    kinds = child_kinds(cluster.kubeconfig)
    listed = cluster.items(f"modeldeployments,apitiers,secrets,{_resource_types(kinds)}", namespace)
    inputs = [item for item in listed if item["kind"] in (ModelDeployment.kind_name, ApiTier.kind_name)]
    secrets = [item for item in listed if item["kind"] == "Secret"]
    expected = expected_children(inputs + secrets, datetime.now(UTC), kinds)
    live = {
        _key(item): item
        for item in listed
        if (item["metadata"].get("labels") or {}).get(MANAGED_BY[0]) == MANAGED_BY[1]
    }
    missing = [key for key in expected if key not in live]
    stale = [
        key
        for key, child in expected.items()
        if key in live
        and (live[key]["metadata"].get("annotations") or {}).get(HASH_ANNOTATION)
        != child["metadata"]["annotations"][HASH_ANNOTATION]
    ]
    rendered_groups = {_group(child) for child in expected.values()}
    extra = [key for key in live if key not in expected]
    orphaned = [key for key in extra if _group(live[key]) not in rendered_groups]
    duplicated = [key for key in extra if _group(live[key]) in rendered_groups]
    unobserved = [
        f"{item['kind']}/{item['metadata']['name']}"
        for item in inputs
        if (item.get("status") or {}).get("observedGeneration") != item["metadata"]["generation"]
    ]

    def names(keys: list[Key]) -> tuple[str, ...]:
        return tuple(sorted(f"{kind}/{name}" for kind, name in keys))

    return Divergence(names(missing), names(stale), names(orphaned), names(duplicated), tuple(unobserved))


# The changes made while the operator runs, is killed, and is away.


def model(name: str, namespace: str, rng: random.Random) -> dict[str, Any]:
    """A valid ModelDeployment with randomly chosen settings that change which children it has (an HPA and a
    PDB only with room to scale) and what they hold."""
    spec: dict[str, Any] = {
        "model": {"repository": f"s3://models/{name}", "backend": "python", "maxBatchSize": 8},
        "versions": [{"version": "2"}, {"version": "1"}],
        "aliases": {"latest": rng.choice(["1", "2"])},
        "triton": {"gpus": rng.choice([0, 1])},
        "batching": {"maxQueueDelayMicroseconds": rng.choice([0, 500, 2000])},
    }
    if rng.random() < 0.5:
        spec["autoscaling"] = {
            "minReplicas": 1,
            "maxReplicas": rng.choice([2, 3]),
            "targets": {"queueDepthPerReplica": rng.choice([2, 4])},
        }
    return {
        "apiVersion": "tollway.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def tier(name: str, namespace: str, rng: random.Random) -> dict[str, Any]:
    """A valid ApiTier: its priority (Triton's priority levels, in every model's config), limits and models
    (routes, in the gateway's config) chosen at random."""
    return {
        "apiVersion": "tollway.dev/v1alpha1",
        "kind": "ApiTier",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "priority": rng.randint(1, 4),
            "limits": {"requestsPerMinute": rng.choice([10, 60, 600])},
            "models": sorted(rng.sample(MODELS, rng.randint(1, len(MODELS)))),
            "auth": {"apiKeys": {"secretSelector": {"matchLabels": {"tollway.dev/tier": name}}}},
        },
    }


def api_key(name: str, namespace: str, rng: random.Random) -> dict[str, Any]:
    """A consumer's API key Secret, for a tier chosen at random (the gateway's config holds it)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"tollway.dev/tier": rng.choice(TIERS)},
        },
        "stringData": {"api-key": f"tw-fault-{name}-{rng.randrange(10**6)}"},
    }


def change(cluster: Cluster, namespace: str, rng: random.Random) -> str:
    """One random change: create or edit (mostly) or delete a model, a tier or an API key; what it was."""
    kind, names, build = rng.choice(
        [("md", MODELS, model)] * 3 + [("tier", TIERS, tier)] * 2 + [("secret", KEYS, api_key)]
    )
    name = rng.choice(names)
    if rng.random() < 0.25:
        cluster.kubectl("delete", kind, name, "-n", namespace, "--ignore-not-found", "--wait=false")
        return f"delete {kind}/{name}"
    cluster.apply(build(name, namespace, rng))
    return f"apply {kind}/{name}"


def changes(cluster: Cluster, namespace: str, rng: random.Random, count: int) -> list[str]:
    return [change(cluster, namespace, rng) for _ in range(count)]


# The kill loop.


@dataclass(frozen=True)
class Round:
    killed_after: float
    """Seconds from the operator's start to its SIGKILL."""
    changes: list[str]
    """What changed while it was away, then while it ran until killed (in order)."""
    converged_after: float
    """Seconds from the restart (the new process started) until nothing diverged."""
    at_restart: Divergence
    """What diverged when the operator was started again."""


@dataclass
class Run:
    rounds: list[Round] = field(default_factory=list)

    def converged(self) -> list[float]:
        return [item.converged_after for item in self.rounds]

    def summary(self) -> str:
        times = sorted(self.converged())
        p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
        found: Counter[str] = Counter()
        for item in self.rounds:
            for part in ("missing", "stale", "orphaned", "duplicated", "unobserved"):
                found[part] += len(getattr(item.at_restart, part))
        return (
            f"kills: {len(self.rounds)}; time to converge after each restart: median "
            f"{statistics.median(times):.1f}s, p95 {p95:.1f}s, max {times[-1]:.1f}s\n"
            f"diverged at the restarts (what the restarted operator had to mend, summed): "
            + ", ".join(f"{part} {count}" for part, count in found.items())
        )


@contextmanager
def running(cluster: Cluster, namespace: str, workdir: Path, resync_seconds: float) -> Iterator[Operator]:
    """`tollway run` on `namespace` (its log in `workdir`), no Triton to ask (a closed port)."""
    workdir.mkdir(parents=True, exist_ok=True)
    with tollway_run(
        cluster.kubeconfig,
        workdir,
        "--namespace",
        namespace,
        "--resync-seconds",
        str(resync_seconds),
        "--triton-address",
        "127.0.0.1:9",
    ) as operator:
        yield operator


def kill_rounds(
    cluster: Cluster,
    namespace: str,
    workdir: Path,
    *,
    kills: int,
    seed: int,
    resync_seconds: float = 2.0,
    converge_timeout: float = 120.0,
    progress: Callable[[int, Round], None] | None = None,
) -> Run:
    """`kills` rounds, each: a few changes while the operator is away; the operator started with more
    changes running beside it and SIGKILLed at a random moment within its first seconds (during its start,
    its first listing, or its reconciles of the changes); the operator started again, and the time until
    nothing diverges. AssertionError with the divergence and the operator's log when it does not converge
    within `converge_timeout`. The seed fixes the changes and the kill moments."""
    rng = random.Random(seed)
    cluster.namespace(namespace)
    run = Run()
    for index in range(kills):
        made = changes(cluster, namespace, rng, rng.randint(1, 3))
        delay = rng.uniform(0.0, 6.0)
        during = random.Random(rng.randrange(2**32))  # the concurrent changes' own stream
        killed = workdir / f"round-{index}-killed"
        with running(cluster, namespace, killed, resync_seconds) as operator, ThreadPoolExecutor(1) as pool:
            concurrent = pool.submit(changes, cluster, namespace, during, 4)
            time.sleep(delay)  # the random kill point (not a wait for a condition)
            operator.process.kill()
            while_running = concurrent.result()
        restarted = time.monotonic()
        with running(cluster, namespace, workdir / f"round-{index}-restarted", resync_seconds) as operator:
            at_restart = divergence(cluster, namespace)
            try:
                eventually(lambda: not divergence(cluster, namespace), timeout=converge_timeout)
            except AssertionError:
                raise AssertionError(
                    f"round {index}: not converged {converge_timeout:.0f}s after the restart: "
                    f"{divergence(cluster, namespace)}\noperator log (tail):\n{operator.process.tail()}"
                ) from None
            took = time.monotonic() - restarted
        found = Round(delay, made + while_running, took, at_restart)
        run.rounds.append(found)
        if progress:
            progress(index, found)
    return run
