"""Scale from zero on the real control plane and data path, for tests/integration/test_scale_from_zero.py
and bench/wake.py: a model with minReplicas 0 (the HPA Tollway renders for it, on the real
kube-controller-manager, prometheus-adapter on Tollway's rules and a real Prometheus), the gateway in front of
it (real Envoy, ratelimit service and Redis, configured by `tollway gateway-config`), and the model's Triton.

kwok's pods run nothing, so the model's Triton is the plant's: a real Triton (PyTriton's) that the plant
starts when the Deployment has a ready pod and stops when it has none, on the ports the gateway sends the
model's requests to. The wake signal (the gateway's count of the model's requests, held or in flight), the
HPA's decisions and the held requests are real; the pod start is kwok's (at once), the model load Triton's
own.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tollway.api import ModelDeployment
from tollway.api.parse import parse
from tollway.ir.serving import TritonServing
from tollway.translate.serving import plan_serving

from testbed import client, dataplane
from testbed.adapter import external_metrics
from testbed.kube import Cluster, eventually, operator
from testbed.processes import answers_http, free_port
from testbed.triton import RunningTriton, infer_body, start

MODEL = "sleeper"
TIER, OTHER_TIER = "pro", "free"
KEY, OTHER_KEY = "k-sleeper", "k-free"
HOLD = {"holdSeconds": 90, "maxHeldRequests": 2, "wakeSeconds": 30}
"""Room for two waiting requests per gateway replica; a wake within the hold's 90 s."""
REQUESTS_PER_MINUTE = 30


def documents(namespace: str) -> list[dict[str, Any]]:
    """The model (scales to zero, CPU), two tiers that may use it (each its own room in the hold) and a key of
    each."""
    model = {
        "apiVersion": "tollway.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": MODEL, "namespace": namespace, "uid": f"uid-{MODEL}"},
        "spec": {
            "model": {"repository": f"s3://models/{MODEL}", "backend": "python", "maxBatchSize": 1},
            "versions": [{"version": "1"}],
            "triton": {"gpus": 0},
            "autoscaling": {"minReplicas": 0, "maxReplicas": 2, "scaleFromZero": HOLD},
        },
    }
    found: list[dict[str, Any]] = [model]
    for tier, key in ((TIER, KEY), (OTHER_TIER, OTHER_KEY)):
        labels = {"tollway.dev/tier": tier}
        spec = {
            "priority": 2,
            "models": [MODEL],
            "limits": {"requestsPerMinute": REQUESTS_PER_MINUTE},
            "auth": {"apiKeys": {"secretSelector": {"matchLabels": labels}}},
        }
        found += [
            {
                "apiVersion": "tollway.dev/v1alpha1",
                "kind": "ApiTier",
                "metadata": {"name": tier, "namespace": namespace, "uid": f"uid-{tier}"},
                "spec": spec,
            },
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": f"{tier}-key", "namespace": namespace, "labels": labels},
                "stringData": {"api-key": key},
            },
        ]
    return found


@dataclass
class Plant:
    """The model's Triton, run while the Deployment reports a ready replica (kwok's pods run nothing)."""

    cluster: Cluster
    namespace: str
    serving: TritonServing
    workdir: Path
    ports: tuple[int, int, int] = field(default_factory=lambda: (free_port(), free_port(), free_port()))
    """HTTP, gRPC and metrics: where the gateway and Prometheus find the model whenever it runs."""
    running: RunningTriton | None = None
    loads: list[tuple[float, float]] = field(default_factory=list)
    """Each start: when the plant saw the ready pod and started Triton, and when Triton said it was ready
    (the model loaded), in time.monotonic()."""
    stopping: threading.Event = field(default_factory=threading.Event)

    def ready_pods(self) -> int:
        status = self.cluster.get("deployment", f"{MODEL}-triton", self.namespace).get("status") or {}
        return int(status.get("readyReplicas") or 0)

    def run(self) -> None:
        while not self.stopping.is_set():
            pods = self.ready_pods()
            if pods and self.running is None:
                self._start()
            elif not pods and self.running is not None:
                self.running.process.stop()
                self.running = None
            self.stopping.wait(0.25)

    def _start(self) -> None:
        seen = time.monotonic()
        http, grpc, metrics = self.ports
        workdir = self.workdir / f"triton-{len(self.loads)}"  # a repository of its own each time
        self.running = start(
            workdir, self.serving, http_port=http, grpc_port=grpc, metrics_port=metrics, admin_key="unused"
        )
        eventually(answers_http(f"http://127.0.0.1:{http}/v2/health/ready"), timeout=120, interval=0.05)
        self.loads.append((seen, time.monotonic()))

    def stop(self) -> None:
        self.stopping.set()
        if self.running is not None:
            self.running.process.stop()


@dataclass
class WakeBed:
    cluster: Cluster
    namespace: str
    gateway: dataplane.GatewayProcesses
    plant: Plant

    def replicas(self) -> int:
        scale = self.cluster.get("deployment", f"{MODEL}-triton", self.namespace)["spec"]
        return int(scale.get("replicas") or 0)

    def held(self) -> float:
        """The requests of tier pro the gateway holds for the model now (that tier's `hold|` cluster's active
        requests)."""
        return dataplane.summed(
            self.gateway.stats(),
            "envoy_cluster_upstream_rq_active",
            envoy_cluster_name=f"hold|{MODEL}|{TIER}",
        )

    def infer(self, value: float = 1.0, key: str = KEY) -> client.Reply:
        """An infer request through the gateway (INPUT four times `value`), with `key` (tier pro's)."""
        return client.request(
            f"http://127.0.0.1:{self.gateway.ports[0]}/v2/models/{MODEL}/infer",
            data=json.dumps(infer_body(value=value)).encode(),
            headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
            timeout=180,
        )


@contextmanager
def bed(cluster: Cluster, workdir: Path, namespace: str) -> Iterator[WakeBed]:
    """Everything running, the model created (at one replica: the HPA scales it to zero once idle)."""
    manifests = documents(namespace)
    serving = plan_serving(parse(ModelDeployment, manifests[0]), (), "unused")
    plant = Plant(cluster, namespace, serving, workdir)
    http, grpc, metrics = plant.ports
    gateway = dataplane.GatewayProcesses(
        workdir=workdir,
        replicas=[dataplane.EnvoyPorts.free()],
        upstreams=[f"{MODEL}=127.0.0.1:{http}:{grpc}"],
    )
    source = workdir / "manifests.yaml"
    source.write_text(yaml.safe_dump_all(manifests))
    prometheus_port = free_port()
    labels = {"namespace": namespace}
    targets = [
        dataplane.ScrapeTarget(
            "gateway", f"127.0.0.1:{gateway.metrics_ports[0]}", labels, "/stats/prometheus"
        ),
        dataplane.ScrapeTarget("triton", f"127.0.0.1:{metrics}", labels),
    ]
    url = f"http://127.0.0.1:{prometheus_port}"
    with ExitStack() as stack:
        stack.callback(cluster.kubectl, "delete", "namespace", namespace, "--wait=false")
        prometheus = dataplane.prometheus(workdir, prometheus_port, targets, [])
        stack.callback(prometheus.stop)
        gateway.write_config(source)
        stack.callback(gateway.stop)
        gateway.start_redis()
        gateway.start_ratelimit()
        gateway.start_envoys()
        stack.enter_context(external_metrics(cluster, workdir, url))
        stack.enter_context(
            operator(cluster, namespace, workdir, "--triton-address", "127.0.0.1:9", "--prometheus-url", url)
        )
        cluster.apply(manifests[0])
        eventually(lambda: _deployment_exists(cluster, namespace), timeout=60)
        stepping = threading.Thread(target=plant.run, daemon=True)
        stepping.start()
        stack.callback(plant.stop)
        yield WakeBed(cluster, namespace, gateway, plant)


def _deployment_exists(cluster: Cluster, namespace: str) -> bool:
    names = {item["metadata"]["name"] for item in cluster.items("deployments", namespace)}
    return f"{MODEL}-triton" in names


@dataclass(frozen=True)
class Wake:
    """One wake from zero, in seconds from the first request."""

    scaled: float
    """The HPA set the Deployment's replicas to 1."""
    pod_ready: float
    """The Deployment reported the pod ready (kwok's: at once)."""
    loaded: float
    """Triton said it was ready: the model loaded (the plant started it at pod_ready)."""
    first_answer: float

    @property
    def model_load(self) -> float:
        return self.loaded - self.pod_ready

    @property
    def without_model_load(self) -> float:
        return self.first_answer - self.model_load


def wake(
    test_bed: WakeBed, held: int, extra: int = 0, other: int = 0
) -> tuple[Wake, list[client.Reply], list[client.Reply], list[client.Reply]]:
    """Sends `held` requests of tier pro at once to the model at zero, then, once the gateway holds them all,
    `extra` more at once (beyond the hold's count: turned away) and `other` of tier free (a room of its own);
    times the wake by the first. Returns the timings and the replies to each group (once each was
    answered)."""
    assert test_bed.replicas() == 0 and test_bed.plant.running is None, "the model is not at zero"
    marks: dict[str, float] = {}
    loads_before = len(test_bed.plant.loads)
    with ThreadPoolExecutor(held + extra + other) as pool:
        sent = time.monotonic()
        futures: list[Future[client.Reply]] = [
            pool.submit(test_bed.infer, float(index + 1)) for index in range(held)
        ]
        for future in futures:
            future.add_done_callback(lambda _: marks.setdefault("first_answer", time.monotonic()))
        eventually(lambda: test_bed.held() >= held, timeout=30, interval=0.05)
        turned: list[Future[client.Reply]] = [pool.submit(test_bed.infer) for _ in range(extra)]
        others = [pool.submit(test_bed.infer, 1.0, OTHER_KEY) for _ in range(other)]
        while not all(future.done() for future in [*futures, *turned, *others]):
            if "scaled" not in marks and test_bed.replicas() > 0:
                marks["scaled"] = time.monotonic()
            time.sleep(0.1)
    # The plant records a load when it sees Triton ready, polling: on a loaded machine the gateway may have
    # seen it ready and answered first.
    eventually(lambda: len(test_bed.plant.loads) > loads_before, timeout=30, interval=0.05)
    seen, loaded = test_bed.plant.loads[loads_before]
    timings = Wake(
        scaled=marks.get("scaled", seen) - sent,
        pod_ready=seen - sent,
        loaded=loaded - sent,
        first_answer=marks["first_answer"] - sent,
    )
    return (
        timings,
        [future.result() for future in futures],
        [future.result() for future in turned],
        [future.result() for future in others],
    )


def at_zero(test_bed: WakeBed, timeout: float = 240) -> float:
    """Waits until the HPA has scaled the model to zero and its Triton is gone; the seconds it took."""
    began = time.monotonic()

    def scaled_to_zero() -> bool:
        hpa = test_bed.cluster.get("hpa", f"{MODEL}-triton", test_bed.namespace)
        conditions = {item["type"]: item["status"] for item in hpa.get("status", {}).get("conditions", [])}
        return conditions.get("ScaledToZero") == "True" and test_bed.plant.running is None

    eventually(scaled_to_zero, timeout=timeout, interval=1)
    return time.monotonic() - began
