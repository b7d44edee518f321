#!/usr/bin/env python3
"""What the gateway adds to a streamed answer, beside going straight to the model side, in one run:

    .venv/bin/python bench/streaming.py [--requests 200] [--tokens 4] [--long 500] [--rounds 3]

The model side is real: Triton (PyTriton's server) serving the decoupled stand-in LLM (tests/models/streamer,
a token every 20 ms) and its `tollway openai-server`. Two paths to it, taking turns ROUNDS times:

1. straight to the OpenAI server;
2. through Tollway's gateway (`tollway gateway-config`, one Envoy worker, its ratelimit service and Redis):
   API key, request and token limits (the body read, the model resolved from it, tokens reserved), the
   stream metered chunk by chunk, usage counted, TTFT and per-token histograms.

A client on a kept-alive connection (one at a time: the stand-in makes one answer at a time, so more would
measure its queue) sends REQUESTS streamed completions of TOKENS tokens and takes the time from sending to
the first `data:` line (TTFT) and to the end; then one stream of LONG tokens, whose chunk-to-chunk gaps
show whether the gateway delays chunks (P50, P99, max gap; total time). Prints, per path, TTFT P50/P99,
what the gateway adds to each, and the CPU each process spent per request beyond its idle rate (measured
for a few seconds before each path's run; clock ticks are 10 ms, so the figures are coarse). Not a test.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from gateway_cost import cpu_seconds

from testbed.dataplane import EnvoyPorts, GatewayProcesses
from testbed.gateway import secret, tier
from testbed.processes import Process
from testbed.triton import language_model, language_model_document, running, start_openai_server

KEYS = {"limited": "tw-bench-stream-key", "unlimited": "tw-bench-free-key"}
"""The gateway's callers: one whose tier has request and token limits (two ratelimit calls a request), one
whose tier has none (no call: the floor of what the gateway adds)."""


@dataclass
class Timings:
    ttft_ms: list[float]
    total_ms: list[float]
    cpu_ms_per_request: dict[str, float]


def stream_once(connection: http.client.HTTPConnection, body: str, headers: dict[str, str]) -> list[float]:
    """One streamed completion: the seconds (from sending) at which each `data:` line arrived."""
    started = time.perf_counter()
    connection.request("POST", "/v1/completions", body=body, headers=headers)
    response = connection.getresponse()
    if response.status != 200:
        raise SystemExit(f"answered {response.status}: {response.read()[:500]!r}")
    arrivals = []
    while line := response.readline():
        if line.startswith(b"data: "):
            arrivals.append(time.perf_counter() - started)
    return arrivals


@dataclass(frozen=True)
class Route:
    port: int
    key: str
    watched: dict[str, Process]

    @property
    def headers(self) -> dict[str, str]:
        return {"content-type": "application/json", "authorization": f"Bearer {self.key}"}


IDLE_SECONDS = 3.0


def idle_cpu_per_second(watched: dict[str, Process]) -> dict[str, float]:
    """What each process spends with no request in flight (timers, health checks, statistics): at a few
    requests a second it would otherwise be most of the per-request figure."""
    before = {name: cpu_seconds(process) for name, process in watched.items()}
    time.sleep(IDLE_SECONDS)
    return {name: (cpu_seconds(process) - before[name]) / IDLE_SECONDS for name, process in watched.items()}


def run_path(path: Route, requests: int, tokens: int) -> Timings:
    """REQUESTS streams one after another; each process's CPU per request beyond what it spends idle."""
    connection = http.client.HTTPConnection("127.0.0.1", path.port, timeout=60)
    body = json.dumps({"model": "writer", "prompt": "one two three", "max_tokens": tokens, "stream": True})
    headers, watched = path.headers, path.watched
    stream_once(connection, body, headers)  # the connection opened, the model warm
    idle = idle_cpu_per_second(watched)
    before = {name: cpu_seconds(process) for name, process in watched.items()}
    started = time.perf_counter()
    ttft, total = [], []
    for _ in range(requests):
        arrivals = stream_once(connection, body, headers)
        ttft.append(arrivals[0] * 1000)
        total.append(arrivals[-1] * 1000)
    elapsed = time.perf_counter() - started
    spent = {
        name: 1000 * max(0.0, cpu_seconds(process) - before[name] - idle[name] * elapsed) / requests
        for name, process in watched.items()
    }
    connection.close()
    return Timings(ttft, total, spent)


def gaps(path: Route, tokens: int) -> list[float]:
    """The gaps (ms) between the chunks of one stream of `tokens` tokens."""
    connection = http.client.HTTPConnection("127.0.0.1", path.port, timeout=120)
    body = json.dumps({"model": "writer", "prompt": "on and on", "max_tokens": tokens, "stream": True})
    arrivals = stream_once(connection, body, path.headers)
    connection.close()
    return [1000 * (later - earlier) for earlier, later in itertools.pairwise(arrivals)]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=200, help="streamed requests per path and round")
    parser.add_argument("--tokens", type=int, default=4, help="tokens of each of those")
    parser.add_argument("--long", type=int, default=500, help="tokens of the one long stream per path")
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tollway-stream-") as directory:
        workdir = Path(directory)
        serving = language_model("writer", "completion")
        with running(workdir / "triton", serving) as triton:
            server, url = start_openai_server(workdir, serving, triton)
            documents = [
                language_model_document("writer", "completion", "gw"),
                tier(
                    "limited", 1, {"requestsPerMinute": 100_000_000, "tokensPerMinute": 1_000_000_000}, ["*"]
                ),
                tier("unlimited", 1, {}, ["*"]),
                *(secret(f"{name}-key", name, key) for name, key in KEYS.items()),
            ]
            source = workdir / "manifests.yaml"
            source.write_text("\n---\n".join(json.dumps(document) for document in documents))
            gateway = GatewayProcesses(
                workdir=workdir,
                replicas=[EnvoyPorts.free()],
                upstreams=[triton.upstream("writer", url)],
                envoy_workers=1,
            )
            try:
                gateway.write_config(source)
                gateway.start_redis()
                gateway.start_ratelimit()
                gateway.start_envoys()
                model_side = {"openai-server": server, "triton": triton.process}
                on_path = {
                    "envoy": gateway.envoys[0],
                    "ratelimit": gateway.processes["ratelimit"],
                    **model_side,
                }
                straight = int(url.split(":")[2].split("/")[0])
                paths = {
                    "straight to the OpenAI server": Route(straight, "", model_side),
                    "Tollway, RPM + TPM limits": Route(gateway.ports[0], KEYS["limited"], on_path),
                    "Tollway, tier without limits": Route(gateway.ports[0], KEYS["unlimited"], on_path),
                }
                rounds = [
                    {label: run_path(path, options.requests, options.tokens) for label, path in paths.items()}
                    for _ in range(options.rounds)
                ]
                long = {label: gaps(path, options.long) for label, path in list(paths.items())[:2]}
            finally:
                gateway.stop()
                server.stop()
    report(rounds, long, options)


def report(
    rounds: list[dict[str, Timings]], long: dict[str, list[float]], options: argparse.Namespace
) -> None:
    print(
        f"Streamed completions of {options.tokens} tokens, one at a time on a kept-alive connection, "
        f"{options.requests} per path and round, {options.rounds} rounds (medians of the rounds' figures)"
    )
    heading = f"{'TTFT P50':>9} {'P99':>7} {'+P50':>6} {'+P99':>6} {'total P50':>10}"
    print(f"{'path':32} {heading}  CPU ms per request")
    base: tuple[float, float] | None = None
    for label in rounds[0]:
        runs = [found[label] for found in rounds]
        p50 = statistics.median(percentile(run.ttft_ms, 0.5) for run in runs)
        p99 = statistics.median(percentile(run.ttft_ms, 0.99) for run in runs)
        total = statistics.median(percentile(run.total_ms, 0.5) for run in runs)
        base = base or (p50, p99)
        cpu = ", ".join(
            f"{name} {statistics.median(run.cpu_ms_per_request[name] for run in runs):.2f}"
            for name in runs[0].cpu_ms_per_request
        )
        added = f"{p50 - base[0]:6.2f} {p99 - base[1]:6.2f}"
        print(f"{label:32} {p50:9.2f} {p99:7.2f} {added} {total:10.2f}  {cpu}")
    print(f"\nOne stream of {options.long} tokens per path: gaps between chunks (ms)")
    print(f"{'path':32} {'P50':>7} {'P99':>7} {'max':>7} {'total ms':>9}")
    for label, found in long.items():
        middle, tail = percentile(found, 0.5), percentile(found, 0.99)
        figures = f"{middle:7.2f} {tail:7.2f} {max(found):7.2f} {sum(found):9.1f}"
        print(f"{label:32} {figures}")


if __name__ == "__main__":
    main()
