#!/usr/bin/env python3
"""What the answer cache gives, through the gateway, in one run:

    .venv/bin/python bench/cache.py [--requests 600] [--questions 200] [--zipf 1.1] [--tokens 8] [--seed 7]

The model side is real: Triton (PyTriton's server) with the decoupled stand-in LLM (tests/models/streamer, a
token every 20 ms), and two models on it, each with TWO `tollway openai-server` replicas behind the gateway
(two upstream endpoints, which Envoy balances over): `pooled` with `spec.cache.store: pod` (each replica its
own cache) and `shared` with `store: shared` (one Redis for both). In front, Tollway's gateway (one Envoy, its
ratelimit service and Redis; a tier with request and token limits).

One client on a kept-alive connection sends the same REQUESTS deterministic chat requests (temperature 0,
TOKENS tokens each) to each model, the question drawn from QUESTIONS with a Zipf distribution of exponent
ZIPF (a fixed SEED): a few questions asked often, most rarely, as real traffic is. Prints per model the hit
ratio (x-tollway-cache: hits over hits and misses) and the latency of hits and of misses (P50, P99), and the
CPU each process spent per request. Not a test.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import secrets
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from gateway_cost import cpu_seconds

from tollway.ir.names import CACHE_PASSWORD_VARIABLE

from testbed import dataplane
from testbed.dataplane import EnvoyPorts, GatewayProcesses
from testbed.gateway import secret, tier
from testbed.processes import Process, free_port
from testbed.triton import language_model, language_model_document, running, start_openai_server

KEY = "tw-bench-cache-key"
STORES = {"pooled": "pod", "shared": "shared"}
"""The two models, by the cache store their spec asks for."""


@dataclass
class Outcome:
    latency_ms: dict[str, list[float]] = field(default_factory=lambda: {"hit": [], "miss": []})
    cpu_ms_per_request: dict[str, float] = field(default_factory=dict)

    @property
    def hit_ratio(self) -> float:
        hits, misses = len(self.latency_ms["hit"]), len(self.latency_ms["miss"])
        return hits / max(hits + misses, 1)


def zipf_questions(count: int, questions: int, exponent: float, seed: int) -> list[str]:
    """`count` questions drawn from `questions` distinct ones, the k-th most asked weighing 1/k^exponent."""
    weights = [1 / rank**exponent for rank in range(1, questions + 1)]
    drawn = random.Random(seed).choices(range(questions), weights=weights, k=count)
    return [f"question number {index} please" for index in drawn]


def ask(connection: http.client.HTTPConnection, model: str, question: str, tokens: int) -> tuple[str, float]:
    """One chat answer, whole: what the cache said of it, and the milliseconds from sending to its end."""
    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": question}],
            "max_tokens": tokens,
            "temperature": 0,
        }
    )
    headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
    started = time.perf_counter()
    connection.request("POST", "/v1/chat/completions", body=body, headers=headers)
    response = connection.getresponse()
    response.read()
    took = (time.perf_counter() - started) * 1000
    if response.status != 200:
        raise SystemExit(f"{model} answered {response.status}")
    return response.getheader("x-tollway-cache") or "", took


def run(port: int, model: str, asked: list[str], tokens: int, processes: dict[str, Process]) -> Outcome:
    outcome = Outcome()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    spent = {name: cpu_seconds(process) for name, process in processes.items()}
    for question in asked:
        said, took = ask(connection, model, question, tokens)
        outcome.latency_ms.setdefault(said, []).append(took)
    outcome.cpu_ms_per_request = {
        name: (cpu_seconds(process) - spent[name]) * 1000 / len(asked) for name, process in processes.items()
    }
    connection.close()
    return outcome


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--seed", type=int, default=7)
    arguments = parser.parse_args()
    asked = zipf_questions(arguments.requests, arguments.questions, arguments.zipf, arguments.seed)
    workdir = Path(tempfile.mkdtemp(prefix="tollway-bench-cache-"))
    caches = {name: {"enabled": True, "store": store} for name, store in STORES.items()}
    servings = [language_model(name, "chat", cache=cache) for name, cache in caches.items()]
    redis_port, password = free_port(), secrets.token_hex(16)
    (workdir / "cache").mkdir()
    redis = dataplane.redis(workdir / "cache", redis_port, password)
    processes: dict[str, Process] = {"cache redis": redis}
    try:
        with running(workdir / "triton", *servings) as triton:
            processes["triton"] = triton.process
            upstreams = []
            for serving in servings:
                shared = STORES[serving.model.name] == "shared"
                flags = [f"--cache-store=redis://127.0.0.1:{redis_port}"] if shared else []
                env = {CACHE_PASSWORD_VARIABLE: password} if shared else None
                ends = []
                for replica in range(2):
                    process, url = start_openai_server(workdir, serving, triton, flags=flags, env=env)
                    processes[f"{serving.model.name} server {replica}"] = process
                    ends.append(triton.upstream(serving.model.name, url).split("=")[1])
                upstreams.append(f"{serving.model.name}={','.join(ends)}")
            documents = [
                *(language_model_document(name, "chat", "gw", cache=cache) for name, cache in caches.items()),
                tier("bench", 2, {"requestsPerMinute": 1_000_000, "tokensPerMinute": 100_000_000}, ["*"]),
                secret("bench-key", "bench", KEY),
            ]
            source = workdir / "manifests.yaml"
            source.write_text("\n---\n".join(json.dumps(document) for document in documents))
            gateway = GatewayProcesses(workdir=workdir, replicas=[EnvoyPorts.free()], upstreams=upstreams)
            gateway.envoy_workers = 1
            try:
                gateway.write_config(source)
                gateway.start_redis()
                gateway.start_ratelimit()
                gateway.start_envoys()
                processes["envoy"] = gateway.envoys[0]
                for name in STORES:
                    report(name, run(gateway.ports[0], name, asked, arguments.tokens, processes), arguments)
            finally:
                gateway.stop()
                for name, process in processes.items():
                    if "server" in name:
                        process.stop()
    finally:
        redis.stop()
    return 0


def report(model: str, outcome: Outcome, arguments: argparse.Namespace) -> None:
    print(
        f"{model} (store: {STORES[model]}, 2 replicas): {arguments.requests} requests, Zipf {arguments.zipf}"
        f" over {arguments.questions} questions, {arguments.tokens} tokens each"
    )
    print(f"  hit ratio {outcome.hit_ratio:.3f}")
    for said in ("hit", "miss"):
        found = outcome.latency_ms[said]
        if found:
            print(
                f"  {said:<4} n={len(found):<4} P50 {statistics.median(found):7.2f} ms   "
                f"P99 {percentile(found, 0.99):7.2f} ms"
            )
    cpu = ", ".join(f"{name} {ms:.3f}" for name, ms in outcome.cpu_ms_per_request.items())
    print(f"  CPU ms per request: {cpu}")


if __name__ == "__main__":
    raise SystemExit(main())
