#!/usr/bin/env python3
"""Reconcile benchmark on the real local control plane.

    .venv/bin/python bench/reconcile.py [--count 100] [--resync-seconds 60]

Adds simulated nodes (kwok's) with room for COUNT Triton pods, so that the pods are scheduled and run as in
a cluster, creates COUNT ModelDeployments at once and measures, for each, the time from its creation to all
five of its children (ServiceAccount, ConfigMap, Deployment, Service, PDB) being present (seen by watches,
so that the harness adds no polling load); then lets the operator resync every object a few times (every
--resync-seconds) and counts the objects Tollway wrote to (API writes per no-op resync, which must be 0)
and the API reads per model per resync period; and reports the operator's peak RSS (VmHWM). Then, in a second
namespace of 10 ModelDeployments behind a gateway of two ApiTiers, it runs the operator with a resync too
long to happen, touches each object in turn (an annotation: a watch event that changes nothing) and counts
the API reads (GET and LIST) the operator makes per event of a ModelDeployment and of an ApiTier, by the
API server's own request counter (`apiserver_request_total`, less what the control plane's controllers
read meanwhile). Last, a gateway of 100 ApiTiers and 1,000 API-key Secrets in front of 10 models: the time
until every key is in Envoy's config, that config's size against a Secret's 1 MiB, how long a new key takes
to reach it, and the CPU the gateway's translation takes. Prints figures; it is not a pass/fail test.

The operator runs from this checkout; with PYTHONPATH naming another checkout's `operator` directory it
runs from there (for figures before and after a change).
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import math
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch

from tollway.translate import translate_gateway

from testbed import nodes

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
NAMESPACE = "bench"
STOP_SECONDS = 30
"""The chart's termination grace period: the operator must stop within it."""
READS_NAMESPACE = "bench-reads"
KEYS_NAMESPACE = "bench-keys"
KEYS_TIERS, KEYS_MODELS, KEYS, NEW_KEYS = 100, 10, 1000, 5
SECRET_LIMIT = 1024 * 1024
"""What the API server accepts in one Secret's data (decoded bytes)."""
CHILDREN_TIMEOUT = 600
BENCH_NODE_PODS, BENCH_NODE_FIRST = 110, 10  # pods (and GPUs) per added node; the first's pod CIDR index
BENCH_NODE_PREFIX = "bench-gpu-"  # not the control plane's own prefix: `up` counts its own nodes
OURS = "app.kubernetes.io/managed-by=tollway"
CHILD_KINDS = ("serviceaccounts", "configmaps", "deployments", "services", "poddisruptionbudgets")
READS_MODELS = 10  # a gateway for 100 models is more than a Secret holds (1 MiB): it is not applied
TIER_TOUCHES = 10
QUIET_SECONDS = 3.0
REQUEST = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
LABEL = re.compile(r'(\w+)="([^"]*)"')


def model_deployment(index: int, namespace: str = NAMESPACE) -> dict[str, Any]:
    return {
        "apiVersion": "tollway.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": f"model-{index:03d}", "namespace": namespace},
        "spec": {
            "model": {
                "repository": f"s3://models/model-{index:03d}",
                "backend": "onnxruntime",
                "maxBatchSize": 8,
            },
            "versions": [{"version": "2"}, {"version": "1"}],
            "aliases": {"latest": "2"},
            "autoscaling": {"minReplicas": 1, "maxReplicas": 4},
        },
    }


def api_tier(name: str, models: list[str], namespace: str = READS_NAMESPACE) -> dict[str, Any]:
    return {
        "apiVersion": "tollway.dev/v1alpha1",
        "kind": "ApiTier",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "models": models,
            "auth": {"apiKeys": {"secretSelector": {"matchLabels": {"tollway.dev/tier": name}}}},
            "limits": {"requestsPerMinute": 60},
        },
    }


def children_listings() -> dict[str, Any]:
    """Kind → the client's namespaced list call for it."""
    core, apps, policy = client.CoreV1Api(), client.AppsV1Api(), client.PolicyV1Api()
    return {
        "serviceaccounts": core.list_namespaced_service_account,
        "configmaps": core.list_namespaced_config_map,
        "deployments": apps.list_namespaced_deployment,
        "services": core.list_namespaced_service,
        "poddisruptionbudgets": policy.list_namespaced_pod_disruption_budget,
    }


def children() -> dict[str, list[Any]]:
    """Kind → Tollway's children of that kind in the benchmark namespace."""
    return {
        kind: listing(NAMESPACE, label_selector=OURS).items for kind, listing in children_listings().items()
    }


def tollway_writes() -> dict[str, tuple[str, ...]]:
    """Per object, the times of Tollway's own entries in managedFields.

    Server-side apply stamps the field manager's entry whenever its apply changes the object, so an
    unchanged stamp means Tollway wrote nothing there. resourceVersions alone would also count the
    Deployment controller's status updates, which are not Tollway's writes.
    """
    stamps: dict[str, tuple[str, ...]] = {}
    objects = client.CustomObjectsApi().list_namespaced_custom_object(
        "tollway.dev", "v1alpha1", NAMESPACE, "modeldeployments"
    )
    for item in objects["items"]:
        entries = item["metadata"].get("managedFields") or []
        stamps[f"md/{item['metadata']['name']}"] = tuple(
            f"{entry.get('subresource', '')}@{entry.get('time')}"
            for entry in entries
            if entry["manager"] == "tollway"
        )
    for kind, items in children().items():
        for item in items:
            entries = item.metadata.managed_fields or []
            stamps[f"{kind}/{item.metadata.name}"] = tuple(
                str(entry.time) for entry in entries if entry.manager == "tollway"
            )
    return stamps


def api_reads() -> Counter[str]:
    """The GET and LIST requests the API server has answered since it started, by "VERB resource".

    Watches are left out (they stay open), and so are reads of a scale subresource (the HPA controller's,
    never Tollway's) and of non-resource paths (this function's own /metrics).
    """
    api = client.ApiClient()
    method, url, headers, _, _ = api.param_serialize("GET", "/metrics", auth_settings=["BearerToken"])
    response = api.call_api(method, url, headers)
    response.read()
    reads: Counter[str] = Counter()
    for line in (response.data or b"").decode().splitlines():
        found = REQUEST.match(line)
        if not found:
            continue
        labels = dict(LABEL.findall(found["labels"]))
        if labels["verb"] in ("GET", "LIST") and labels["resource"] and labels["subresource"] != "scale":
            reads[f"{labels['verb']} {labels['resource']}"] += int(float(found["value"]))
    return reads


def quiet(timeout: float = 120.0) -> Counter[str]:
    """Wait until no read has been answered for QUIET_SECONDS (the operator is done); the counts then."""
    last, since, deadline = api_reads(), time.monotonic(), time.monotonic() + timeout
    while time.monotonic() - since < QUIET_SECONDS:
        if time.monotonic() > deadline:
            print(f"note: reads went on for {timeout:.0f}s; the figures below include them")
            break
        time.sleep(0.5)
        now = api_reads()
        if now != last:
            last, since = now, time.monotonic()
    return last


def touch(plural: str, name: str, value: int) -> None:
    """A change that is only an annotation: a watch event after which the operator has nothing to do."""
    patch = {"metadata": {"annotations": {"bench": str(value)}}}
    client.CustomObjectsApi().patch_namespaced_custom_object(
        "tollway.dev", "v1alpha1", READS_NAMESPACE, plural, name, patch
    )


def reads_per_event(
    plural: str, names: list[str], idle_per_second: Counter[str]
) -> tuple[float, Counter[str]]:
    """Touch each object in turn, each after the operator went quiet; reads per event, and by request."""
    before, started = quiet(), time.monotonic()
    for value, name in enumerate(names):
        touch(plural, name, value)
        quiet()
    after, elapsed = quiet(), time.monotonic() - started
    made = Counter(
        {
            key: round((after[key] - before[key] - idle_per_second[key] * elapsed) / len(names), 1)
            for key in after
            if after[key] > before[key]
        }
    )
    return sum(made.values()), +made


@contextmanager
def tollway_operator(
    kubeconfig: str, namespace: str, log_name: str, resync_seconds: float
) -> Iterator[subprocess.Popen[bytes]]:
    """`tollway run` watching `namespace`, its log in .local/LOG_NAME."""
    (ROOT / ".local").mkdir(exist_ok=True)
    log = open(ROOT / ".local" / log_name, "w")  # noqa: SIM115 (open for the operator's lifetime)
    operator = subprocess.Popen(
        [
            str(BIN / "tollway"),
            "run",
            "--namespace",
            namespace,
            "--resync-seconds",
            str(resync_seconds),
            "--liveness",
            "",
            "--triton-address",
            "127.0.0.1:9",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "KUBECONFIG": kubeconfig},
    )
    try:
        yield operator
    finally:
        asked = time.monotonic()
        operator.terminate()
        try:
            operator.wait(timeout=STOP_SECONDS)
            print(f"operator stopped {time.monotonic() - asked:.1f} s after SIGTERM")
        except subprocess.TimeoutExpired:
            operator.kill()
            operator.wait()
            print(f"operator did not stop within {STOP_SECONDS} s of SIGTERM (its grace period): killed")
        log.close()


def print_reads(what: str, per_event: float, made: Counter[str]) -> None:
    gets = sum(count for key, count in made.items() if key.startswith("GET "))
    lists = ", ".join(f"{key} {count:g}" for key, count in sorted(made.items()) if key.startswith("LIST "))
    print(f"API reads per {what} event: {per_event:.1f} (GET {gets:.1f}; {lists or 'no LIST'})")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def add_nodes(count: int) -> None:
    """Simulated nodes (kwok's, like the control plane's own) with room for COUNT one-GPU Triton pods, and
    wait until they are Ready: each offers BENCH_NODE_PODS pods and as many GPUs, since what the benchmark
    loads is the number of pods, not the number of machines."""
    version = client.VersionApi().get_code().git_version
    for index in range(math.ceil(count / BENCH_NODE_PODS)):
        node = nodes.node(BENCH_NODE_FIRST + index, kubelet_version=f"{version}-kwok")
        node["metadata"]["name"] = f"{BENCH_NODE_PREFIX}{index}"
        capacity = {
            **nodes.NODE_CAPACITY,
            "pods": str(BENCH_NODE_PODS),
            "nvidia.com/gpu": str(BENCH_NODE_PODS),
        }
        node["status"]["capacity"] = node["status"]["allocatable"] = capacity
        # Sent raw: the client's Node model wants fields a simulated node lacks (bootID, machineID …).
        api = client.ApiClient()
        request = api.param_serialize(
            "POST",
            "/api/v1/nodes",
            body=node,
            header_params={"Content-Type": "application/json"},
            auth_settings=["BearerToken"],
        )
        response = api.call_api(*request[:4])
        response.read()
        if response.status not in (201, 409):  # 409: there from an earlier run
            raise RuntimeError(f"cannot add node {node['metadata']['name']}: {response.data!r}")
    while not all(
        map(schedulable, json.loads(client.CoreV1Api().list_node(_preload_content=False).data)["items"])
    ):
        time.sleep(1)


def schedulable(node: dict[str, Any]) -> bool:
    """Ready, and rid of the not-ready taint (the node controller takes it away soon after)."""
    conditions = {entry["type"]: entry["status"] for entry in node["status"].get("conditions", [])}
    taints = [taint["key"] for taint in node["spec"].get("taints", [])]
    return conditions.get("Ready") == "True" and "node.kubernetes.io/not-ready" not in taints


def main() -> int:
    options = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    options.add_argument("--count", type=int, default=100)
    options.add_argument("--resync-seconds", type=float, default=60.0)
    arguments = options.parse_args()
    count, resync = arguments.count, arguments.resync_seconds

    up = subprocess.run(
        [str(ROOT / "hack" / "controlplane"), "up"], check=True, stdout=subprocess.PIPE, text=True
    )
    kubeconfig = up.stdout.strip().split("=", 1)[1]
    config.load_kube_config(kubeconfig)
    kubectl = [str(BIN / "kubectl"), "--kubeconfig", kubeconfig]
    subprocess.run(
        [*kubectl, "apply", "--server-side", "-f", str(ROOT / "crds")], check=True, capture_output=True
    )
    for namespace in (NAMESPACE, READS_NAMESPACE, KEYS_NAMESPACE):
        subprocess.run(
            [*kubectl, "delete", "namespace", namespace, "--ignore-not-found", "--wait=true"],
            check=True,
            capture_output=True,
        )
        subprocess.run([*kubectl, "create", "namespace", namespace], check=True, capture_output=True)

    add_nodes(count)
    try:
        with tollway_operator(kubeconfig, NAMESPACE, "bench-operator.log", resync) as operator:
            measure_resources(kubectl, count, operator, resync)
        measure_reads(kubectl, kubeconfig)
        measure_keys(kubectl, kubeconfig, resync)
    finally:
        for namespace in (NAMESPACE, READS_NAMESPACE, KEYS_NAMESPACE):
            subprocess.run(
                [*kubectl, "delete", "namespace", namespace, "--wait=false"], check=False, capture_output=True
            )
        added = [f"{BENCH_NODE_PREFIX}{index}" for index in range(math.ceil(count / BENCH_NODE_PODS))]
        subprocess.run(
            [*kubectl, "delete", "node", *added, "--ignore-not-found"], check=False, capture_output=True
        )
    return 0


class ChildrenWatch:
    """When each model was created and when all its children had appeared, from a watch per kind (polling
    LISTs at 1,000 models would be load on the API server of its own)."""

    def __init__(self) -> None:
        self.created: dict[str, float] = {}
        self.kinds: dict[str, set[str]] = {}
        self.done: dict[str, float] = {}
        self._guard, self._stopped = threading.Lock(), threading.Event()
        models: Any = functools.partial(
            client.CustomObjectsApi().list_namespaced_custom_object, "tollway.dev", "v1alpha1"
        )
        listings = {
            **children_listings(),
            "modeldeployments": functools.partial(models, plural="modeldeployments"),
        }
        self._watches = {kind: watch.Watch() for kind in listings}
        for kind, listing in listings.items():
            threading.Thread(target=self._follow, args=(kind, listing), daemon=True).start()

    def latencies(self) -> list[float]:
        """Seconds from each model's creation to all its children present, of the models that have them."""
        with self._guard:
            return sorted(
                self.done[model] - self.created[model] for model in self.done if model in self.created
            )

    def _follow(self, kind: str, listing: Any) -> None:
        selector = "" if kind == "modeldeployments" else OURS
        while not self._stopped.is_set():
            try:
                for event in self._watches[kind].stream(listing, NAMESPACE, label_selector=selector):
                    if event["type"] == "ADDED":
                        self._seen(kind, event["object"])
            except Exception:  # a new API server's watch cache not ready yet, or stop(): watch again, or end
                time.sleep(0.5)  # (a fresh watch lists what exists as ADDED first)

    def _seen(self, kind: str, item: Any) -> None:
        now = time.monotonic()
        with self._guard:
            if kind == "modeldeployments":
                self.created.setdefault(item["metadata"]["name"], now)
                return
            kinds = self.kinds.setdefault(item.metadata.labels["tollway.dev/model"], set())
            kinds.add(kind)
            if len(kinds) == len(CHILD_KINDS):
                self.done.setdefault(item.metadata.labels["tollway.dev/model"], now)

    def stop(self) -> None:
        self._stopped.set()
        for stream in self._watches.values():
            stream.stop()


def measure_resources(
    kubectl: list[str], count: int, operator: subprocess.Popen[bytes], resync: float
) -> None:
    """Reconcile latency of COUNT new ModelDeployments, writes and reads per no-op resync, peak RSS."""
    time.sleep(3)  # the operator lists and starts its watches
    manifests = "\n---\n".join(json.dumps(model_deployment(index)) for index in range(count))
    watching = ChildrenWatch()
    time.sleep(1)  # the watches are open
    started = time.monotonic()
    subprocess.run(
        [*kubectl, "apply", "--server-side", "-f", "-"],
        input=manifests,
        text=True,
        check=True,
        capture_output=True,
    )
    applied = time.monotonic() - started
    while len(watching.done) < count and time.monotonic() - started < CHILDREN_TIMEOUT:
        time.sleep(0.5)
    watching.stop()
    latencies = watching.latencies()
    print(f"ModelDeployments: {count}, created by one kubectl apply in {applied:.2f}s")
    print(f"children present for {len(latencies)}/{count} within {CHILDREN_TIMEOUT} s")
    if latencies:
        median, p99 = statistics.median(latencies), latencies[max(0, int(len(latencies) * 0.99) - 1)]
        print(f"reconcile latency (created → all 5 children present): median {median:.2f}s, P99 {p99:.2f}s")

    # The Deployment controller works through the new Deployments, and their pods start; those status changes
    # are real changes that Tollway reports. Measure the no-op resync once every replica is available.
    while not all(
        (item.status.observed_generation or 0) == item.metadata.generation
        and (item.status.available_replicas or 0) == item.spec.replicas
        for item in client.AppsV1Api().list_namespaced_deployment(NAMESPACE).items
    ):
        time.sleep(5)
    time.sleep(2 * resync)
    before, reads_before, since = tollway_writes(), api_reads(), time.monotonic()
    resyncs = 3
    time.sleep(resyncs * resync + 1)
    after, reads_after, elapsed = tollway_writes(), api_reads(), time.monotonic() - since
    changed = sorted(key for key in before if after.get(key) != before[key])
    print(f"objects watched for writes: {len(before)} over {resyncs} resyncs of every ModelDeployment")
    print(f"Tollway's API writes per no-op resync: {len(changed) / resyncs:.1f} (written: {changed[:5]})")
    made = Counter({key: reads_after[key] - reads_before[key] for key in reads_after})
    per_period = sum((+made).values()) / (elapsed / resync) / count
    print(f"API reads per model per resync period (everyone's, the control plane's too): {per_period:.2f}")
    print(f"  by request over the {elapsed:.0f}s: {dict(sorted((+made).items()))}")
    print(f"operator peak RSS: {peak_rss_mib(operator.pid):.0f} MiB")


def measure_reads(kubectl: list[str], kubeconfig: str) -> None:
    """API reads per watch event, in a namespace of READS_MODELS models behind a gateway of two tiers."""
    models = [model_deployment(index, READS_NAMESPACE) for index in range(READS_MODELS)]
    names = [model["metadata"]["name"] for model in models]
    tiers = [api_tier("free", names[:2]), api_tier("pro", names)]
    subprocess.run(
        [*kubectl, "apply", "-f", "-"],
        input="\n---\n".join(json.dumps(document) for document in models + tiers),
        text=True,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    with tollway_operator(kubeconfig, READS_NAMESPACE, "bench-operator-reads.log", resync_seconds=3600):
        listing: Any = client.CustomObjectsApi().list_namespaced_custom_object
        while not all(
            (item.get("status") or {}).get("conditions")
            for plural in ("modeldeployments", "apitiers")
            for item in listing("tollway.dev", "v1alpha1", READS_NAMESPACE, plural)["items"]
        ):
            time.sleep(1)
        start, started = quiet(), time.monotonic()
        time.sleep(10)
        idle = quiet() - start  # what the control plane's controllers read meanwhile
        elapsed = time.monotonic() - started
        idle_per_second = Counter({key: value / elapsed for key, value in idle.items()})
        print(f"control plane's own reads while the operator idles: {sum(idle_per_second.values()):.1f}/s")
        print_reads("ModelDeployment", *reads_per_event("modeldeployments", names, idle_per_second))
        touched = [tier["metadata"]["name"] for tier in tiers] * (TIER_TOUCHES // len(tiers))
        print_reads("ApiTier", *reads_per_event("apitiers", touched, idle_per_second))


def key_secret(index: int) -> dict[str, Any]:
    tier = f"tier-{index % KEYS_TIERS:03d}"
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": f"key-{index:05d}",
            "namespace": KEYS_NAMESPACE,
            "labels": {"tollway.dev/tier": tier, "tollway.dev/consumer": f"consumer-{index:05d}"},
        },
        "stringData": {"api-key": f"sk-bench-{index:05d}-{os.urandom(12).hex()}"},
    }


def envoy_config() -> dict[str, bytes] | None:
    """The gateway's Envoy config Secret's files, decoded; None before it exists."""
    try:
        found = client.CoreV1Api().read_namespaced_secret("tollway-gateway-envoy", KEYS_NAMESPACE)
    except client.ApiException as error:
        if error.status == 404:
            return None
        raise
    return {name: base64.b64decode(value) for name, value in (found.data or {}).items()}


def measure_keys(kubectl: list[str], kubeconfig: str, resync: float) -> None:
    """KEYS_TIERS ApiTiers with KEYS API-key Secrets among them, in front of KEYS_MODELS models: how long the
    gateway takes to render, how large Envoy's config is against a Secret's limit, and how long a new key
    takes to reach it."""
    models = [model_deployment(index, KEYS_NAMESPACE) for index in range(KEYS_MODELS)]
    names = [model["metadata"]["name"] for model in models]
    tiers = [api_tier(f"tier-{index:03d}", names, KEYS_NAMESPACE) for index in range(KEYS_TIERS)]
    keys = [key_secret(index) for index in range(KEYS)]
    subprocess.run(
        [*kubectl, "apply", "-f", "-"],
        input="\n---\n".join(json.dumps(document) for document in models + tiers + keys),
        text=True,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    last = keys[-1]["stringData"]["api-key"].encode()
    with tollway_operator(kubeconfig, KEYS_NAMESPACE, "bench-operator-keys.log", resync):
        started = time.monotonic()
        while (files := envoy_config()) is None or last not in files["lds.yaml"]:
            time.sleep(0.5)
        took = time.monotonic() - started
        print(
            f"gateway of {KEYS_TIERS} tiers, {KEYS} keys, {KEYS_MODELS} models: every key in Envoy's config"
        )
        print(f"  {took:.1f} s after the operator started")
        size = sum(map(len, files.values()))
        parts = ", ".join(f"{name} {len(content) / 1024:.0f} KiB" for name, content in sorted(files.items()))
        limit = SECRET_LIMIT // 1024
        print(f"Envoy config Secret: {size / 1024:.0f} KiB of the {limit} KiB a Secret holds ({parts})")
        waits = []
        for index in range(KEYS, KEYS + NEW_KEYS):
            fresh = key_secret(index)
            added = time.monotonic()
            client.CoreV1Api().create_namespaced_secret(KEYS_NAMESPACE, fresh)
            while fresh["stringData"]["api-key"].encode() not in (envoy_config() or {}).get("lds.yaml", b""):
                time.sleep(0.1)
            waits.append(time.monotonic() - added)
        median, longest = statistics.median(waits), max(waits)
        print(
            f"a new key in Envoy's config Secret: median {median:.1f} s, max {longest:.1f} s of {NEW_KEYS},"
        )
        print("  before the kubelet refreshes the mounted Secret in Envoy's pods")
    render_time(tiers + models, keys)


def render_time(documents: list[dict[str, Any]], keys: list[dict[str, Any]]) -> None:
    """The gateway's translation and rendering alone, in this process, on the same documents."""
    secrets = [
        {**key, "data": {"api-key": base64.b64encode(key["stringData"]["api-key"].encode()).decode()}}
        for key in keys
    ]
    started = time.process_time()
    translate_gateway(KEYS_NAMESPACE, documents, secrets, datetime.now(UTC))
    print(f"gateway translation and rendering: {time.process_time() - started:.2f} s of CPU")


if __name__ == "__main__":
    sys.exit(main())
