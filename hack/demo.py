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
3. Sends traffic as the three example consumers (one per tier), each request to either Envoy replica, then
   asks the streaming LLM (the `assistant` example, its stand-in a decoupled model streaming a token every
   20 ms, behind its `tollway openai-server`) a question through the official OpenAI SDK, streamed; prints
   per consumer what was allowed and limited, tokens and cost, latency through the gateway, the streamed
   answer with its time to first token, a sample of the rate-limit and deprecation headers, and `kubectl
   get md,tier`.

Exits 0 when everything behaved as the resources say, 1 with the reasons otherwise. Leaves nothing running;
with --keep it stays in the foreground with everything up, says how to reach it, and stops it all on Ctrl-C
(Envoy ends with the process that started it, so the demo cannot hand the data path over to the shell).

Every component starts as in the integration tests, from the test bed (hack/testbed); the report is a
`testbed.report.Report` built from what was measured, printed and judged by that module.
"""

from __future__ import annotations

import argparse
import base64
import json
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from contextlib import ExitStack, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import openai
import yaml

from tollway.api import ModelDeployment
from tollway.api.parse import parse
from tollway.ir.gateway import CAPACITY_FILE, CAPACITY_REREAD_SECONDS
from tollway.ir.names import CACHE_PASSWORD_VARIABLE
from tollway.ir.serving import TritonServing
from tollway.translate.serving import plan_serving, tier_priority

from testbed import controlplane, dataplane, triton
from testbed.client import request
from testbed.kube import Cluster, tollway_run
from testbed.otel import Collector
from testbed.processes import ROOT, free_port, poll
from testbed.report import (
    EmbeddingAnswer,
    Quality,
    Report,
    SentRequest,
    StreamedAnswer,
    client_usage,
    consumer_traffic,
    judge,
    latency,
    samples,
    text,
    unwelcome_conditions,
)

BIN = Path(sys.executable).parent
WORK = ROOT / ".local" / "demo"
CONTROLPLANE = str(ROOT / "hack" / "controlplane")
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


def step(message: str) -> None:
    print(f"==> {message}", flush=True)


class Failed(Exception):
    """The demo cannot go on; the message says why."""


# --- the control plane and the operator -------------------------------------------------------------------


def start_control_plane(stack: ExitStack) -> Cluster:
    """A control plane of this run's own, stopped by `stack` (whatever part of it started)."""
    if (controlplane.STATE / "kube-apiserver.pid").exists():
        # Reusing it would report on whatever it holds, and stopping it at the end would lose that.
        raise Failed(f"a local control plane is already up ({controlplane.STATE}): stop it first (make down)")
    stack.callback(subprocess.run, [CONTROLPLANE, "down"], check=False)
    subprocess.run([CONTROLPLANE, "up"], check=True, stdout=subprocess.DEVNULL)
    return Cluster(controlplane.ADMIN_KUBECONFIG)


def unsettled(cluster: Cluster) -> list[str]:
    """Resources whose status does not yet describe their current generation."""
    return [
        f"{item['kind']}/{item['metadata']['name']}"
        for item in cluster.items("md,tier", NAMESPACE)
        if (item.get("status") or {}).get("observedGeneration") != item["metadata"]["generation"]
    ]


# --- the data path ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataPath:
    gateways: list[str]  # http://127.0.0.1:PORT per Envoy replica
    prometheus: str
    samples: Collector
    capacity_files: list[Path]  # what each Envoy replica reads GET /v1/capacity from


def cpu_stand_in(document: dict[str, Any]) -> dict[str, Any]:
    """The ModelDeployment as this machine can serve it: the echo model under the same name, versions and
    queue settings, on CPU instances (no GPU, no TensorRT)."""
    spec = json.loads(json.dumps(document["spec"]))
    spec["model"]["backend"] = "python"
    spec["triton"] = {"gpus": 0, "instanceGroups": [{"count": 1, "kind": "CPU"}]}
    spec.pop("optimization", None)
    return {**document, "spec": spec}


def manifests(cluster: Cluster) -> list[dict[str, Any]]:
    """The namespace's ModelDeployments, ApiTiers and Secrets as the API server holds them."""
    documents = cluster.items("md,tier,secret", NAMESPACE)
    for document in documents:
        document.setdefault("apiVersion", "v1")
        document["metadata"].pop("managedFields", None)
    return documents


def shared_cache(stack: ExitStack, serving: TritonServing) -> tuple[list[str], dict[str, str]]:
    """For a model whose answer cache is shared: a Redis here, as its own runs in the cluster, and the OpenAI
    server's flag and password for it; nothing for any other model."""
    cache = serving.openai.cache if serving.openai is not None else None
    if cache is None or not cache.shared:
        return [], {}
    step(f"starting {serving.model.name}'s shared answer cache (Redis), as the operator runs it")
    port, password = free_port(), secrets.token_hex(16)
    workdir = WORK / f"{serving.model.name}-cache"
    workdir.mkdir(parents=True, exist_ok=True)
    stack.callback(dataplane.redis(workdir, port, password).stop)
    return [f"--cache-store=redis://127.0.0.1:{port}"], {CACHE_PASSWORD_VARIABLE: password}


def start_data_path(stack: ExitStack, cluster: Cluster, triton_http: int, prometheus_port: int) -> DataPath:
    documents = manifests(cluster)
    source = WORK / "manifests.yaml"
    source.write_text(yaml.safe_dump_all(documents))
    models = [document for document in documents if document["kind"] == "ModelDeployment"]
    priorities = [tier_priority(document) for document in documents if document["kind"] == "ApiTier"]
    servings = [
        plan_serving(parse(ModelDeployment, cpu_stand_in(model)), priorities, "unused") for model in models
    ]
    # One Triton serves them all, started with the first one's flags: a model with the response cache first,
    # so that its --cache-config is among them.
    servings.sort(key=lambda serving: serving.cache_size_bytes is None)
    names = ", ".join(f"{item.model.name} {list(item.model.versions)}" for item in servings)
    step(f"starting Triton (PyTriton's server, CPU) with stand-ins for {names}")
    shutil.rmtree(WORK / "triton", ignore_errors=True)
    served = triton.start(WORK / "triton", *servings, http_port=triton_http)
    stack.callback(served.process.stop)
    openai_urls = {}
    for item in servings:
        if item.openai is not None:
            step(f"starting {item.model.name}'s OpenAI server (tollway openai-server), as its pod runs it")
            flags, env = shared_cache(stack, item)
            process, openai_urls[item.model.name] = triton.start_openai_server(
                WORK, item, served, flags=flags, env=env
            )
            stack.callback(process.stop)

    step("starting Redis and the ratelimit service on the rules the operator applied")
    applied = cluster.get("configmap", "tollway-gateway-ratelimit", NAMESPACE)
    rules = WORK / "ratelimit-root" / "ratelimit" / "config"
    rules.mkdir(parents=True, exist_ok=True)
    for name, content in applied["data"].items():
        (rules / name).write_text(content)
    gateway = dataplane.GatewayProcesses(
        workdir=WORK,
        replicas=[dataplane.EnvoyPorts.free() for _ in range(ENVOY_REPLICAS)],
        upstreams=[served.upstream(item.model.name, openai_urls.get(item.model.name)) for item in servings],
        ratelimit_root=WORK / "ratelimit-root",
    )
    stack.callback(gateway.stop)
    gateway.start_redis()
    gateway.start_ratelimit()

    step("starting an OpenTelemetry Collector: the gateway's sample sink")
    sink = Collector(WORK)
    stack.callback(sink.stop)
    sink.start()

    step(f"starting {ENVOY_REPLICAS} Envoy replicas configured by `tollway gateway-config`")
    gateway.write_config(source, f"--sample-sink={sink.grpc_address}")
    gateway.start_envoys()

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
    labels = {"namespace": NAMESPACE}
    targets = [
        dataplane.ScrapeTarget("triton", served.metrics, labels),
        dataplane.ScrapeTarget("ratelimit", f"127.0.0.1:{gateway.ratelimit_ports.metrics}", labels),
        *(
            dataplane.ScrapeTarget(f"envoy-{replica}", f"127.0.0.1:{port}", labels, "/stats/prometheus")
            for replica, port in enumerate(gateway.metrics_ports)
        ),
    ]
    stack.callback(dataplane.prometheus(WORK, prometheus_port, targets, [rule_file]).stop)
    return DataPath(
        gateways=[f"http://127.0.0.1:{port}" for port in gateway.ports],
        prometheus=f"http://127.0.0.1:{prometheus_port}",
        samples=sink,
        capacity_files=[
            gateway.replica_dir(index) / "capacity" / CAPACITY_FILE for index in range(ENVOY_REPLICAS)
        ],
    )


# --- traffic -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Consumer:
    name: str
    tier: str
    key: str


def consumers(cluster: Cluster) -> list[Consumer]:
    """The example consumers: each API-key Secret names one, its label names the tier."""
    found = []
    for secret in cluster.items("secret", NAMESPACE):
        tier = (secret["metadata"].get("labels") or {}).get("tollway.dev/tier")
        if tier in TRAFFIC:
            key = base64.b64decode(secret["data"]["api-key"]).decode()
            found.append(Consumer(secret["metadata"]["name"], tier, key))
    return sorted(found, key=lambda consumer: list(TRAFFIC).index(consumer.tier))


def infer(gateway: str, consumer: Consumer, model: str, value: float) -> SentRequest:
    body = triton.infer_body(INPUT_VALUES, value, max_tokens=MAX_TOKENS)
    minute = int(time.time() // 60)
    reply = request(
        f"{gateway}/v1/models/{urllib.parse.quote(model, safe=':')}/infer",
        data=json.dumps(body).encode(),
        headers={"authorization": f"Bearer {consumer.key}", "content-type": "application/json"},
        timeout=30,
    )
    return SentRequest(consumer.name, model, minute, reply)


def send_traffic(path: DataPath, everyone: list[Consumer]) -> list[SentRequest]:
    # The ratelimit service counts per calendar minute: start early in one, so that a burst is seldom split
    # in two (the report expects the limit per minute the requests were sent in, either way).
    if time.time() % 60 > 50:
        wait = 60 - time.time() % 60
        step(f"waiting {wait:.0f}s for the next minute, so each consumer's burst falls in one limit window")
        time.sleep(wait)
    sent: list[SentRequest] = []
    for consumer in everyone:
        for model, count in TRAFFIC[consumer.tier]:
            for _ in range(count):
                # A different input each time, so that the response cache does not answer in Triton's place.
                gateway = path.gateways[len(sent) % len(path.gateways)]
                sent.append(infer(gateway, consumer, model, float(len(sent))))
    return sent


STREAMED_MODEL = "assistant"
STREAMED_BY = "pro"
"""The example streaming LLM, and the tier whose consumer asks it a question through the OpenAI SDK."""


def stream_chat(path: DataPath, everyone: list[Consumer]) -> StreamedAnswer:
    """One chat answer, streamed through the gateway with the official OpenAI SDK, then the same question
    again (temperature 0: the model's answer cache may answer it)."""
    consumer = next(each for each in everyone if each.tier == STREAMED_BY)
    client = openai.OpenAI(base_url=f"{path.gateways[0]}/v1", api_key=consumer.key, max_retries=0)
    first = streamed_answer(client, consumer)
    return replace(first, repeat=streamed_answer(client, consumer))


def streamed_answer(client: openai.OpenAI, consumer: Consumer) -> StreamedAnswer:
    """A chat answer streamed: timed as the client sees it (from the call to the first piece of text, and to
    the last)."""
    asked = [{"role": "user", "content": "what does a gateway in front of a model do"}]
    started = time.perf_counter()
    first, last, pieces, served, usage = None, 0.0, [], "", None
    stream = client.chat.completions.create(
        model=STREAMED_MODEL,
        messages=asked,
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        served, usage = chunk.model, chunk.usage or usage
        if chunk.choices and chunk.choices[0].delta.content:
            last = (time.perf_counter() - started) * 1000
            first = first if first is not None else last
            pieces.append(chunk.choices[0].delta.content)
    if first is None or usage is None:
        raise Failed(f"the streamed answer from {STREAMED_MODEL} carried no text or no usage")
    return StreamedAnswer(
        consumer=consumer.name,
        asked=STREAMED_MODEL,
        served=served,
        text="".join(pieces),
        ttft_ms=first,
        total_ms=last,
        chunks=len(pieces),
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        request_id=stream.response.headers["x-request-id"],
        cache=stream.response.headers.get("x-tollway-cache", ""),
    )


def rate_and_read_capacity(
    cluster: Cluster, path: DataPath, everyone: list[Consumer], answer: StreamedAnswer
) -> Quality:
    """The streaming consumer rates its answer (POST /v1/feedback, naming its request id), and reads its
    models' capacity (GET /v1/capacity) from the document the operator published (its ConfigMap, copied to
    where each Envoy replica reads it, as the kubelet would)."""
    consumer = next(each for each in everyone if each.name == answer.consumer)
    headers = {"authorization": f"Bearer {consumer.key}", "content-type": "application/json"}
    said = {
        "request_id": answer.request_id,
        "model": answer.served,
        "rating": 5,
        "comment": "clear and quick",
    }
    rated = request(f"{path.gateways[0]}/v1/feedback", data=json.dumps(said).encode(), headers=headers)
    recorded = path.samples.records(
        lambda record: (
            record["attributes"].get("tollway.record") == "feedback"
            and record["attributes"].get("request_id") == answer.request_id
        ),
        timeout=20,
    )
    published = cluster.get("configmap", "tollway-gateway-capacity", NAMESPACE)["data"][CAPACITY_FILE]
    for document in path.capacity_files:
        document.with_suffix(".new").write_text(published)
        document.with_suffix(".new").rename(document)
    time.sleep(CAPACITY_REREAD_SECONDS + 1)  # each Envoy worker reads the document again after this long
    capacity = request(f"{path.gateways[0]}/v1/capacity", headers=headers).json()["data"]
    return Quality(
        rated=answer.request_id,
        feedback_status=rated.status,
        feedback_recorded=bool(recorded),
        samples=sum(
            record["attributes"].get("tollway.record") == "sample" for record in path.samples.all_records()
        ),
        capacity=tuple(f"{entry['model']}: {entry['state']}" for entry in capacity),
    )


EMBEDDING_MODEL = "text-search"
EMBEDDED_BY = "enterprise"


def embed_texts(path: DataPath, everyone: list[Consumer]) -> EmbeddingAnswer:
    """Embeddings of a few texts through the gateway's /v1/embeddings with the official OpenAI SDK."""
    consumer = next(each for each in everyone if each.tier == EMBEDDED_BY)
    client = openai.OpenAI(base_url=f"{path.gateways[1]}/v1", api_key=consumer.key, max_retries=0)
    texts = ["a gateway meters every call", "and limits each tier", "exactly"]
    answer = client.embeddings.create(model=EMBEDDING_MODEL, input=texts)
    return EmbeddingAnswer(
        consumer=consumer.name,
        asked=EMBEDDING_MODEL,
        served=answer.model,
        vectors=len(answer.data),
        dimensions=len(answer.data[0].embedding),
        prompt_tokens=answer.usage.prompt_tokens,
    )


# --- what came of it ---------------------------------------------------------------------------------------


def gateway_counters(prometheus_url: str) -> dict[tuple[str, str], int]:
    """The gateway's usage counters of requests and tokens as Prometheus scraped them, summed over the Envoy
    replicas: (kind, consumer) → total."""
    expression = 'sum by (__name__, consumer) ({__name__=~"envoy_tollway_usage_(requests|input|output)"})'
    counters = {}
    for series in dataplane.prometheus_query(prometheus_url, expression):
        kind = series["metric"]["__name__"].removeprefix("envoy_tollway_usage_")
        counters[(kind, series["metric"]["consumer"])] = round(float(series["value"][1]))
    return counters


def models_with_p99(cluster: Cluster) -> list[str] | None:
    """The ModelDeployments whose status carries a P99 read from Prometheus, once all do."""
    models = cluster.items("md", NAMESPACE)
    with_p99 = [
        item["metadata"]["name"] for item in models if "p99Ms" in (item["status"].get("metrics") or {})
    ]
    return with_p99 if len(with_p99) == len(models) else None


def measure(
    cluster: Cluster,
    path: DataPath,
    everyone: list[Consumer],
    sent: list[SentRequest],
    *,
    streamed: StreamedAnswer,
    embedded: EmbeddingAnswer,
    quality: Quality,
) -> Report:
    tiers = {item["metadata"]["name"]: item["spec"] for item in cluster.items("tier", NAMESPACE)}
    traffic = tuple(consumer_traffic(each.name, each.tier, tiers[each.tier], sent) for each in everyone)
    return Report(
        envoy_replicas=ENVOY_REPLICAS,
        traffic=traffic,
        latency=latency(sent),
        samples=samples(sent),
        gateway_counters=counters_once_equal(path.prometheus, client_usage(traffic, streamed, embedded)),
        every_model_has_p99=bool(poll(lambda: models_with_p99(cluster), 30, interval=1.0)),
        resource_table=cluster.kubectl("get", "md,tier", "-n", NAMESPACE).stdout,
        conditions=unwelcome_conditions(cluster.items("md,tier", NAMESPACE)),
        streamed=streamed,
        embedded=embedded,
        gateway_ttft_ms=poll(lambda: gateway_ttft_ms(path.prometheus), 30, interval=1.0),
        quality=quality,
    )


def gateway_ttft_ms(prometheus_url: str) -> float | None:
    """The streamed model's mean time to first token by the gateway's histogram (its sum over its count, as
    Prometheus scraped it from the Envoy replicas; Envoy merges histograms every few seconds), once there."""
    matchers = f'namespace="{NAMESPACE}",model="{STREAMED_MODEL}"'
    total, count = (f"sum(envoy_tollway_stream_ttft_ms_{part}{{{matchers}}})" for part in ("sum", "count"))
    query = f"{total} / {count}"
    found = [float(series["value"][1]) for series in dataplane.prometheus_query(prometheus_url, query)]
    return found[0] if found and found[0] == found[0] else None  # NaN (0/0) before the first merge


def counters_once_equal(
    prometheus_url: str, expected: dict[tuple[str, str], int]
) -> dict[tuple[str, str], int]:
    """The gateway's counters once they equal what the clients received (`expected`; Prometheus scrapes
    every second), or as they are after 30 s."""

    def equal() -> dict[tuple[str, str], int] | None:
        counters = gateway_counters(prometheus_url)
        return counters if counters == expected else None

    return poll(equal, 30, interval=1.0) or gateway_counters(prometheus_url)


# --- running it all ----------------------------------------------------------------------------------


def interrupted(*_: object) -> None:
    raise KeyboardInterrupt


def print_how_to_reach(cluster: Cluster, path: DataPath, someone: Consumer) -> None:
    body = '{"inputs":[{"name":"INPUT","shape":[1,2],"datatype":"FP32","data":[1,2]}]}'
    print(f"\nEverything is up until Ctrl-C. In another shell: export KUBECONFIG={cluster.kubeconfig}")
    print(f"  gateway replicas: {' and '.join(path.gateways)}")
    print(f"  curl -s -H 'authorization: Bearer {someone.key}' -H 'content-type: application/json' \\")
    print(f"       -d '{body}' {path.gateways[0]}/v1/models/chat/infer")
    print(f"  Prometheus: {path.prometheus}/graph?g0.expr=tollway:consumer_cost:per_day")
    print(f"  logs: {WORK}", flush=True)


def demo(stack: ExitStack, keep: bool, began: float) -> int:
    """Everything, in order; the exit code. Whatever starts is stopped by `stack`."""
    WORK.mkdir(parents=True, exist_ok=True)
    step("building the ratelimit service from the Go module proxy (first run only: a minute or two)")
    subprocess.run(
        [str(ROOT / "hack" / "build-tools.sh"), "ratelimit"], check=True, stdout=subprocess.DEVNULL
    )
    step("starting the local control plane (the first run builds Kubernetes from source: minutes)")
    cluster = start_control_plane(stack)
    step("installing the CRDs")
    cluster.install_crds()
    triton_http, prometheus_port = free_port(), free_port()
    step(f"starting the operator (tollway run); its JSON log goes to {WORK / 'operator.log'}")
    operator_options = [
        *("--namespace", NAMESPACE, "--resync-seconds", "5"),
        # Every model's Triton is the one local stand-in: the operator asks it what is ready.
        *("--triton-address", f"127.0.0.1:{triton_http}"),
        *("--prometheus-url", f"http://127.0.0.1:{prometheus_port}"),
    ]
    stack.enter_context(tollway_run(cluster.kubeconfig, WORK, *operator_options))
    step("applying examples/")
    cluster.kubectl("apply", "-f", str(ROOT / "examples"))
    step("waiting for the operator to reconcile every resource")
    if not poll(lambda: not unsettled(cluster), RECONCILE_TIMEOUT, interval=1.0):
        late = ", ".join(unsettled(cluster))
        raise Failed(f"not reconciled after {RECONCILE_TIMEOUT:.0f}s: {late} (see {WORK / 'operator.log'})")
    path = start_data_path(stack, cluster, triton_http, prometheus_port)
    everyone = consumers(cluster)
    step(f"sending traffic as {', '.join(f'{c.name} ({c.tier})' for c in everyone)}")
    sent = send_traffic(path, everyone)
    step(
        f"asking {STREAMED_MODEL} a question through the OpenAI SDK, streamed, as the {STREAMED_BY} consumer"
    )
    streamed = stream_chat(path, everyone)
    step(f"embedding texts with {EMBEDDING_MODEL} through the OpenAI SDK, as the {EMBEDDED_BY} consumer")
    embedded = embed_texts(path, everyone)
    step("rating the streamed answer (POST /v1/feedback) and reading capacity (GET /v1/capacity)")
    quality = rate_and_read_capacity(cluster, path, everyone, streamed)
    step("reading what Prometheus and the operator made of it")
    report = measure(cluster, path, everyone, sent, streamed=streamed, embedded=embedded, quality=quality)
    verdict = judge(report)
    print(text(report))
    print(verdict.text(time.monotonic() - began), flush=True)
    if keep:
        print_how_to_reach(cluster, path, everyone[0])
        with suppress(KeyboardInterrupt):
            signal.pause()
    return verdict.exit_code


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
            return demo(stack, keep, time.monotonic())
    except KeyboardInterrupt:
        print("\ninterrupted: everything the demo started is stopped", file=sys.stderr)
        return 130
    except (Failed, AssertionError, subprocess.SubprocessError, OSError) as error:
        detail = getattr(error, "stderr", None) or ""
        print(f"\nFAILED: {error}\n{detail}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
