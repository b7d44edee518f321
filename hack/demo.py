#!/usr/bin/env python3
"""Tollway's main job on the local default: a real control plane, the operator, the examples, the real data
path, traffic, and a report.

    make demo                 # or: .venv/bin/python hack/demo.py [--keep]

1. Starts the local control plane (hack/controlplane), installs the CRDs, runs `tollway run` and applies
   examples/; waits until the operator has reconciled every ModelDeployment and ApiTier.
2. Starts the data path on loopback from what is now in the API server: Triton (the examples' models are
   GPU models, so each is served by a CPU stand-in of the same name and versions, its config rendered by
   Tollway), Redis, the ratelimit service on the rules the operator applied (its ConfigMap, verbatim), two
   Envoy replicas configured by `tollway gateway-config` from the same resources and Secrets, and
   Prometheus scraping all of them and evaluating the rules `tollway render` makes for them.
3. Sends traffic as the three example consumers (one per tier), each request to either Envoy replica, and
   prints per consumer what was allowed and limited, tokens and cost, latency through the gateway, a sample
   of the rate-limit and deprecation headers, and `kubectl get md,tier`.

Exits 0 when everything behaved as the resources say, 1 with the reasons otherwise. Leaves nothing running;
with --keep it stays in the foreground with everything up, says how to reach it, and stops it all on Ctrl-C
(Envoy ends with the process that started it, so the demo cannot hand the data path over to the shell).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tollway.api import ModelDeployment
from tollway.api.parse import parse
from tollway.translate.serving import serving, tier_priority

import dataplane
import triton_local
from controlplane import STATE as CONTROL_PLANE_STATE

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
WORK = ROOT / ".local" / "demo"
NAMESPACE = "ai"
RECONCILE_TIMEOUT = 90.0
ENVOY_REPLICAS = 2

#: What each tier's consumer sends, in order: (model as the client names it, requests). Free's 26 are more
#: than its 20 requests per minute, so the gateway must limit 6 of them; Pro's second batch asks for chat's
#: deprecated version through the `stable` alias.
TRAFFIC = {
    "free": [("chat", 26)],
    "pro": [("chat", 20), ("chat:stable", 10)],
    "enterprise": [("chat", 15), ("text-embed", 15)],
}
INPUT_VALUES = 8  # the stand-in model counts one prompt token per input value
MAX_TOKENS = 16  # and as many completion tokens as asked for

T = TypeVar("T")


def step(message: str) -> None:
    print(f"==> {message}", flush=True)


def kubectl(kubeconfig: Path, *args: str) -> str:
    return subprocess.run(
        [str(BIN / "kubectl"), "--kubeconfig", str(kubeconfig), *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def listing(kubeconfig: Path, kinds: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(
        kubectl(kubeconfig, "get", kinds, "-n", NAMESPACE, "-o", "json")
    )["items"]
    return items


def eventually(check: Callable[[], T | None], timeout: float, interval: float = 1.0) -> T | None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(interval)


class Failed(Exception):
    """The demo cannot go on; the message says why."""


# --- the control plane and the operator -------------------------------------------------------------------


def unsettled(kubeconfig: Path) -> list[str]:
    """Resources whose status does not yet describe their current generation."""
    return [
        f"{item['kind']}/{item['metadata']['name']}"
        for item in listing(kubeconfig, "md,tier")
        if (item.get("status") or {}).get("observedGeneration") != item["metadata"]["generation"]
    ]


def start_operator(kubeconfig: Path, prometheus_url: str, triton_http: int) -> subprocess.Popen[bytes]:
    with (WORK / "operator.log").open("wb") as log:
        return subprocess.Popen(
            [
                str(BIN / "tollway"),
                "run",
                "--namespace",
                NAMESPACE,
                "--resync-seconds",
                "5",
                "--liveness",
                "",
                # Every model's Triton is the one local stand-in: the operator asks it what is ready.
                "--triton-address",
                f"127.0.0.1:{triton_http}",
                "--prometheus-url",
                prometheus_url,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        )


# --- the data path ------------------------------------------------------------------------------------------


@dataclass
class DataPath:
    gateways: list[str]  # http://127.0.0.1:PORT per Envoy replica
    prometheus: str
    processes: list[dataplane.Process] = field(default_factory=list)


def cpu_stand_in(document: dict[str, Any]) -> dict[str, Any]:
    """The ModelDeployment as this machine can serve it: the echo model under the same name, versions and
    queue settings, on CPU instances (no GPU, no TensorRT)."""
    spec = json.loads(json.dumps(document["spec"]))
    spec["model"]["backend"] = "python"
    spec["triton"] = {"gpus": 0, "instanceGroups": [{"count": 1, "kind": "CPU"}]}
    spec.pop("optimization", None)
    return {**document, "spec": spec}


def manifests(kubeconfig: Path) -> list[dict[str, Any]]:
    """The namespace's ModelDeployments, ApiTiers and Secrets as the API server holds them."""
    documents = listing(kubeconfig, "md,tier,secret")
    for document in documents:
        document.setdefault("apiVersion", "v1")
        document["metadata"].pop("managedFields", None)
    return documents


def start_data_path(stack: ExitStack, kubeconfig: Path, triton_http: int, prometheus_port: int) -> DataPath:
    documents = manifests(kubeconfig)
    source = WORK / "manifests.yaml"
    source.write_text(yaml.safe_dump_all(documents))
    models = [document for document in documents if document["kind"] == "ModelDeployment"]
    priorities = [tier_priority(document) for document in documents if document["kind"] == "ApiTier"]
    servings = [
        serving(parse(ModelDeployment, cpu_stand_in(model)), priorities, "unused") for model in models
    ]
    names = ", ".join(f"{item.model.name} {list(item.model.versions)}" for item in servings)
    step(f"starting Triton (PyTriton's server, CPU) with stand-ins for {names}")
    path = DataPath(gateways=[], prometheus=f"http://127.0.0.1:{prometheus_port}")
    stack.callback(lambda: [process.stop() for process in reversed(path.processes)])
    shutil.rmtree(WORK / "triton", ignore_errors=True)
    triton = triton_local.start(WORK / "triton", *servings, http_port=triton_http)
    path.processes.append(triton.process)
    grpc = triton.grpc.rsplit(":", 1)[1]

    step("starting Redis and the ratelimit service on the rules the operator applied")
    redis_port = dataplane.free_port()
    path.processes.append(dataplane.redis(WORK, redis_port))
    applied = json.loads(
        kubectl(kubeconfig, "get", "configmap", "tollway-gateway-ratelimit", "-n", NAMESPACE, "-o", "json")
    )
    rules = WORK / "ratelimit-root" / "ratelimit" / "config"
    rules.mkdir(parents=True, exist_ok=True)
    for name, text in applied["data"].items():
        (rules / name).write_text(text)
    ratelimit_ports = dataplane.RateLimitPorts(*(dataplane.free_port() for _ in range(4)))
    path.processes.append(dataplane.ratelimit(WORK, WORK / "ratelimit-root", redis_port, ratelimit_ports))

    step(f"starting {ENVOY_REPLICAS} Envoy replicas configured by `tollway gateway-config`")
    targets = [
        dataplane.ScrapeTarget("triton", triton.metrics, {"namespace": NAMESPACE}),
        dataplane.ScrapeTarget("ratelimit", f"127.0.0.1:{ratelimit_ports.metrics}", {"namespace": NAMESPACE}),
    ]
    for replica in range(ENVOY_REPLICAS):
        port, admin, metrics = (dataplane.free_port() for _ in range(3))
        upstreams = [f"--upstream={item.model.name}=127.0.0.1:{triton_http}:{grpc}" for item in servings]
        out = WORK / f"gateway-{replica}"
        dataplane.gateway_config(
            [source],
            out,
            *upstreams,
            f"--port={port}",
            f"--admin-port={admin}",
            f"--metrics-port={metrics}",
            f"--ratelimit=127.0.0.1:{ratelimit_ports.grpc}",
            f"--replicas={ENVOY_REPLICAS}",
        )
        path.processes.append(dataplane.envoy(WORK, out / "envoy", port, base_id=port))
        path.gateways.append(f"http://127.0.0.1:{port}")
        targets.append(
            dataplane.ScrapeTarget(f"envoy-{replica}", f"127.0.0.1:{metrics}", {"namespace": NAMESPACE})
        )

    step("starting Prometheus with the recording and alerting rules Tollway renders for these resources")
    rendered = subprocess.run(
        [str(BIN / "tollway"), "render", "-f", str(source)], capture_output=True, text=True, check=False
    )
    groups = [
        group
        for manifest in yaml.safe_load_all(rendered.stdout)
        if manifest and manifest["kind"] == "PrometheusRule"
        for group in manifest["spec"]["groups"]
    ]
    if not groups:
        raise Failed(f"`tollway render` gave no PrometheusRule:\n{rendered.stderr}")
    rule_file = WORK / "rules.yaml"
    rule_file.write_text(yaml.safe_dump({"groups": groups}))
    path.processes.append(dataplane.prometheus(WORK, prometheus_port, targets, [rule_file]))
    return path


# --- traffic -----------------------------------------------------------------------------------------------


@dataclass
class Reply:
    consumer: str
    model: str
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float
    minute: int  # the calendar minute it was sent in: the ratelimit service's window

    def usage(self) -> tuple[int, int]:
        """(input, output) tokens the model reported; (0, 0) for a refused request."""
        if self.status != 200:
            return 0, 0
        outputs = {output["name"]: output["data"] for output in json.loads(self.body)["outputs"]}
        counts = json.loads(outputs["USAGE"][0])
        return int(counts["prompt_tokens"]), int(counts["completion_tokens"])


def infer(gateway: str, consumer: str, key: str, model: str, value: float) -> Reply:
    body = {
        "inputs": [
            {"name": "INPUT", "shape": [1, INPUT_VALUES], "datatype": "FP32", "data": [value] * INPUT_VALUES}
        ],
        "parameters": {"max_tokens": MAX_TOKENS},
    }
    request = urllib.request.Request(
        f"{gateway}/v1/models/{urllib.parse.quote(model, safe=':')}/infer",
        data=json.dumps(body).encode(),
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
    )
    minute, began = int(time.time() // 60), time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, headers, data = response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as error:
        status, headers, data = error.code, dict(error.headers.items()), error.read()
    elapsed = time.perf_counter() - began
    return Reply(consumer, model, status, {k.lower(): v for k, v in headers.items()}, data, elapsed, minute)


@dataclass(frozen=True)
class Consumer:
    name: str
    tier: str
    key: str


def consumers(kubeconfig: Path) -> list[Consumer]:
    """The example consumers: each API-key Secret names one, its label names the tier."""
    found = []
    for secret in listing(kubeconfig, "secret"):
        tier = (secret["metadata"].get("labels") or {}).get("tollway.dev/tier")
        if tier in TRAFFIC:
            key = base64.b64decode(secret["data"]["api-key"]).decode()
            found.append(Consumer(secret["metadata"]["name"], tier, key))
    return sorted(found, key=lambda consumer: list(TRAFFIC).index(consumer.tier))


def send_traffic(path: DataPath, everyone: list[Consumer]) -> list[Reply]:
    # The ratelimit service counts per calendar minute: start early in one, so that a burst is seldom split
    # in two (the report expects the limit per minute the requests were sent in, either way).
    if time.time() % 60 > 50:
        wait = 60 - time.time() % 60
        step(f"waiting {wait:.0f}s for the next minute, so each consumer's burst falls in one limit window")
        time.sleep(wait)
    replies = []
    sent = 0
    for consumer in everyone:
        for model, count in TRAFFIC[consumer.tier]:
            for _ in range(count):
                # A different input each time, so that the response cache does not answer in Triton's place.
                gateway = path.gateways[sent % len(path.gateways)]
                replies.append(infer(gateway, consumer.name, consumer.key, model, float(sent)))
                sent += 1
    return replies


# --- the report ----------------------------------------------------------------------------------------


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def gateway_counters(prometheus: str) -> dict[tuple[str, str], int]:
    """The gateway's usage counters as Prometheus scraped them: (kind, consumer) → total."""
    query = 'sum by (key1, key2) (ratelimit_service_rate_limit_total_hits{key1=~"usage_.*"})'
    url = f"{prometheus}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    with urllib.request.urlopen(url, timeout=5) as response:
        result = json.loads(response.read())["data"]["result"]
    counters = {}
    for series in result:
        kind = series["metric"]["key1"].split("_")[1]  # usage_KIND_TIER
        consumer = series["metric"]["key2"].removeprefix("consumer_")
        counters[(kind, consumer)] = round(float(series["value"][1]))
    return counters


@dataclass
class Report:
    """What is printed, and what did not behave as configured."""

    problems: list[str] = field(default_factory=list)

    def headers(self, title: str, reply: Reply | None, prefixes: tuple[str, ...]) -> None:
        if reply is None:
            self.problems.append(f"no reply for: {title}")
            return
        print(f"\n{title}: HTTP {reply.status}")
        shown = {name: value for name, value in sorted(reply.headers.items()) if name.startswith(prefixes)}
        for name, value in shown.items():
            print(f"  {name}: {value}")
        if reply.status != 200:
            print(f"  body: {reply.body.decode(errors='replace')[:200]}")
        if not shown:
            self.problems.append(f"{title}: none of the headers {', '.join(prefixes)}")


def usage_table(
    report: Report, tiers: dict[str, Any], everyone: list[Consumer], replies: list[Reply]
) -> dict[tuple[str, str], int]:
    """Per consumer: allowed and limited against the tier's limit, tokens and cost; the usage seen."""
    print(f"\nTraffic through the gateway ({ENVOY_REPLICAS} Envoy replicas, one ratelimit service on Redis):")
    columns = f"{'consumer':<9} {'tier':<11} {'sent':>5} {'allowed':>8} {'limited':>8} {'in tok':>7}"
    print(f"  {columns} {'out tok':>8} {'cost':>14}   expected")
    seen: dict[tuple[str, str], int] = {}
    for consumer in everyone:
        mine = [reply for reply in replies if reply.consumer == consumer.name]
        allowed = [reply for reply in mine if reply.status == 200]
        limited = [reply for reply in mine if reply.status == 429]
        tokens_in = sum(reply.usage()[0] for reply in allowed)
        tokens_out = sum(reply.usage()[1] for reply in allowed)
        pricing, limits = tiers[consumer.tier].get("pricing") or {}, tiers[consumer.tier]["limits"]
        cost = (
            tokens_in * Decimal(pricing.get("inputPer1kTokens", "0"))
            + tokens_out * Decimal(pricing.get("outputPer1kTokens", "0"))
        ) / 1000
        # Sent one after another, well under every token limit: only requests per minute limit them.
        per_minute = limits.get("requestsPerMinute")
        windows = Counter(reply.minute for reply in mine)
        should = sum(min(count, per_minute or count) for count in windows.values())
        print(
            f"  {consumer.name:<9} {consumer.tier:<11} {len(mine):>5} {len(allowed):>8} {len(limited):>8}"
            f" {tokens_in:>7} {tokens_out:>8} {pricing.get('currency', ''):>4} {cost:>9.6f}"
            f"   {should} allowed ({per_minute}/min)"
        )
        if (len(allowed), len(limited)) != (should, len(mine) - should):
            report.problems.append(
                f"{consumer.name}: {len(allowed)} allowed, {len(limited)} limited; expected {should}"
            )
        report.problems += [
            f"{consumer.name} → {reply.model}: HTTP {reply.status} {reply.body[:200]!r}"
            for reply in mine
            if reply.status not in (200, 429)
        ]
        seen |= {("requests", consumer.name): len(allowed), ("input", consumer.name): tokens_in}
        seen[("output", consumer.name)] = tokens_out
    return seen


def models_with_p99(kubeconfig: Path) -> list[str] | None:
    """The ModelDeployments whose status carries a P99 read from Prometheus, once all do."""
    models = listing(kubeconfig, "md")
    with_p99 = [
        item["metadata"]["name"] for item in models if "p99Ms" in (item["status"].get("metrics") or {})
    ]
    return with_p99 if len(with_p99) == len(models) else None


def report(kubeconfig: Path, path: DataPath, everyone: list[Consumer], replies: list[Reply]) -> list[str]:
    """Print the report; return what did not behave as configured."""
    result = Report()
    tiers = {item["metadata"]["name"]: item["spec"] for item in listing(kubeconfig, "tier")}
    seen = usage_table(result, tiers, everyone, replies)

    latencies = [reply.seconds * 1000 for reply in replies if reply.status == 200]
    if latencies:
        p50, p99 = statistics.median(latencies), percentile(latencies, 0.99)
        print(
            f"\nLatency through the gateway (allowed requests, as the clients saw it): P50 {p50:.1f} ms,",
            end="",
        )
        print(f" P99 {p99:.1f} ms, n={len(latencies)}")

    def first(match: Callable[[Reply], bool]) -> Reply | None:
        return next((reply for reply in replies if match(reply)), None)

    rate_headers = ("x-ratelimit-", "retry-after")
    result.headers(
        "A sample response (bob → chat)",
        first(lambda r: r.consumer == "bob" and r.model == "chat"),
        rate_headers,
    )
    result.headers("A limited request (alice → chat)", first(lambda r: r.status == 429), rate_headers)
    deprecated = first(lambda r: r.model == "chat:stable")
    result.headers(
        "A deprecated version (bob → chat:stable = version 2)", deprecated, ("deprecation", "sunset", "link")
    )

    print("\nThe gateway's usage counters in Prometheus (read by the cost and usage-spike rules): ", end="")
    if eventually(lambda: gateway_counters(path.prometheus) == seen, 30):
        print("requests and tokens per consumer equal what the clients received.")
    else:
        print("they differ from what the clients received.")
        result.problems.append(
            f"usage counters {gateway_counters(path.prometheus)} != what clients saw {seen}"
        )
    if not eventually(lambda: models_with_p99(kubeconfig), 30):
        result.problems.append("the operator did not write every model's P99 from Prometheus into its status")

    print()
    print(kubectl(kubeconfig, "get", "md,tier", "-n", NAMESPACE))
    print("Why not Ready here: the local control plane runs no pods (no kubelet) and no KEDA; the data path")
    print("above ran beside it, on loopback, from the same resources. What the operator says:")
    for item in listing(kubeconfig, "md,tier"):
        for condition in item["status"]["conditions"]:
            unwelcome = "False" if condition["type"] == "Ready" else "True"
            if condition["type"] in ("Ready", "Degraded") and condition["status"] == unwelcome:
                name = f"{item['kind']}/{item['metadata']['name']}"
                print(
                    f"  {name} {condition['type']}={unwelcome} {condition['reason']}: {condition['message']}"
                )
    return result.problems


# --- running it all ----------------------------------------------------------------------------------


def interrupted(*_: object) -> None:
    raise KeyboardInterrupt


def print_how_to_reach(kubeconfig: Path, path: DataPath, someone: Consumer) -> None:
    body = '{"inputs":[{"name":"INPUT","shape":[1,2],"datatype":"FP32","data":[1,2]}]}'
    print(f"\nEverything is up until Ctrl-C. In another shell: export KUBECONFIG={kubeconfig}")
    print(f"  gateway replicas: {' and '.join(path.gateways)}")
    print(f"  curl -s -H 'authorization: Bearer {someone.key}' -H 'content-type: application/json' \\")
    print(f"       -d '{body}' {path.gateways[0]}/v1/models/chat/infer")
    print(f"  Prometheus: {path.prometheus}/graph?g0.expr=tollway:consumer_cost:per_day")
    print(f"  logs: {WORK}", flush=True)


def demo(stack: ExitStack, keep: bool, began: float) -> list[str]:
    """Everything, in order; what did not behave as configured. Whatever starts is stopped by `stack`."""
    WORK.mkdir(parents=True, exist_ok=True)
    step("building the ratelimit service from the Go module proxy (first run only: a minute or two)")
    subprocess.run(
        [str(ROOT / "hack" / "build-tools.sh"), "ratelimit"], check=True, stdout=subprocess.DEVNULL
    )
    step("starting the local control plane (the first run builds Kubernetes from source: minutes)")
    controlplane = str(ROOT / "hack" / "controlplane")
    if (CONTROL_PLANE_STATE / "kube-apiserver.pid").exists():
        # Reusing it would report on whatever it holds, and stopping it at the end would lose that.
        raise Failed(
            f"a local control plane is already up ({CONTROL_PLANE_STATE}): stop it first (make down)"
        )
    up = subprocess.run([controlplane, "up"], check=True, stdout=subprocess.PIPE, text=True)
    stack.callback(subprocess.run, [controlplane, "down"], check=False)
    kubeconfig = Path(up.stdout.strip().split("=", 1)[1])
    step("installing the CRDs")
    kubectl(kubeconfig, "apply", "--server-side", "-f", str(ROOT / "crds"))
    kubectl(kubeconfig, "wait", "--for", "condition=Established", "-f", str(ROOT / "crds"))
    triton_http, prometheus_port = dataplane.free_port(), dataplane.free_port()
    step(f"starting the operator (tollway run); its JSON log goes to {WORK / 'operator.log'}")
    operator = start_operator(kubeconfig, f"http://127.0.0.1:{prometheus_port}", triton_http)
    stack.callback(stop, operator)
    step("applying examples/")
    kubectl(kubeconfig, "apply", "-f", str(ROOT / "examples"))
    step("waiting for the operator to reconcile every resource")
    if not eventually(lambda: not unsettled(kubeconfig), RECONCILE_TIMEOUT):
        late = ", ".join(unsettled(kubeconfig))
        raise Failed(f"not reconciled after {RECONCILE_TIMEOUT:.0f}s: {late} (see {WORK / 'operator.log'})")
    path = start_data_path(stack, kubeconfig, triton_http, prometheus_port)
    everyone = consumers(kubeconfig)
    step(f"sending traffic as {', '.join(f'{c.name} ({c.tier})' for c in everyone)}")
    replies = send_traffic(path, everyone)
    step("reading what Prometheus and the operator made of it")
    problems = report(kubeconfig, path, everyone, replies)
    conclude(problems, began)
    if keep:
        print_how_to_reach(kubeconfig, path, everyone[0])
        with suppress(KeyboardInterrupt):
            signal.pause()
    return problems


def conclude(problems: list[str], began: float) -> None:
    took = time.monotonic() - began
    if problems:
        print(f"\nFAILED after {took:.0f}s; what did not behave as configured:")
        for problem in problems:
            print(f"  - {problem}")
    else:
        print(f"\nEverything behaved as configured ({took:.0f}s).", flush=True)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait(timeout=30)


def main() -> int:
    options = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    options.add_argument(
        "--keep", action="store_true", help="keep everything up until Ctrl-C; say how to reach it"
    )
    keep = options.parse_args().keep
    # SIGTERM and SIGHUP stop the demo as Ctrl-C does: everything it started is stopped on the way out.
    for number in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, interrupted)
    try:
        with ExitStack() as stack:
            return 1 if demo(stack, keep, time.monotonic()) else 0
    except KeyboardInterrupt:
        print("\ninterrupted: everything the demo started is stopped", file=sys.stderr)
        return 130
    except (Failed, AssertionError, subprocess.CalledProcessError, OSError) as error:
        detail = getattr(error, "stderr", None) or ""
        print(f"\nFAILED: {error}\n{detail}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
