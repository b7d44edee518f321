#!/usr/bin/env python3
"""The gateway's cost per request beside bare Envoy, in one run:

    .venv/bin/python bench/gateway_cost.py [--seconds 10] [--connections 8] [--workers 1] [--rounds 3]
                                           [--rate 1000] [--deny-list 0] [--sleeping-model] [--profile]

Paths to one fake model server, each driven in turn by wrk (Debian's; one thread, CONNECTIONS keep-alive
connections, closed loop) with the same KServe v2 infer POST:

1. straight to the fake model server: an Envoy that answers every request itself with a fixed infer reply
   reporting its tokens, so the upstream is never what limits the others;
2. bare Envoy with WORKERS workers: a listener with the router only;
3. Tollway's gateway as `tollway gateway-config` renders it, with WORKERS workers: API key, request and token
   limits (reserved on the way in, settled at the end), usage counters, headers, through its ratelimit
   service and Redis; the limits far above the load;
4. and 5., where the cost goes: the same gateway for a caller whose tier has a request limit only (one
   ratelimit call a request instead of two), and for one whose tier has no limits (no call: the Lua
   programs, authentication, routing, usage counting and the headers alone);
6. a caller flooding past its tier's limit (1 request a minute), refused with 429 before its body is read:
   what a refusal costs (the ratelimit service answers it from its cache of over-limit keys);
7. the OpenAI API's unary chat completion through the same gateway for the RPM + TPM caller (the model named
   in the body, resolved and limited after it is read), to a second fake server that answers with a fixed
   chat completion and its usage: beside path 3, what the OpenAI route costs over the KServe one;
8. path 3 for a caller whose tier samples every request (ApiTier spec.sampling.sampleRate "1"): the body and
   answer kept, masked and sent as an OTLP log to a real OpenTelemetry Collector (testbed.otel), whose CPU
   is counted too: what quality sampling costs at its most;
9. path 3 for a caller whose tier allows only some networks (Envoy's RBAC filter) and limits requests per
   client address (a third descriptor in the request limits' call): what those defences add;
10. path 3 for a caller whose tier checks its prompts against eight patterns (none matching): what prompt
   checks add;
11. path 3 for a caller whose tier does not count its keys' signals (spec.alerts.keyCompromise.enabled
   false; every other path counts them, the default): what the key-compromise signals cost (a call to the
   ratelimit service as a request ends, sent once an hour per network and program by each Envoy worker, so
   a steady load from one client sends almost none).

With --sleeping-model, the gateway also serves a model that scales to zero (minReplicas 0), which puts the
hold (hold.lua) in every request's filter chain: the paths above then pay for its filter, and a twelfth path
sends path 3's requests to that model, awake, whose hold asks its cluster whether it is ready every 2 s per
worker. What a gateway with a sleeping model costs, beside a run without the option.

With --deny-list N, the namespace's deny list holds N addresses (none of them the load's), which every
request through Tollway is checked against first: what a reputation feed of that size costs.

The paths take turns, ROUNDS times (so a slow spell of the shared cores falls on all of them), and each
figure is the median of its rounds: requests/s, P50 and P99 latency, throughput as a share of bare Envoy's,
and the CPU each process spent per request (user + system, from /proc), so the cost shows where it is.

Then the latency at a constant RATE requests/s (open loop: vegeta, built by hack/build-tools.sh, sends on
schedule whether or not answers have come, so a slow answer cannot slow the load down and hide itself),
each path for SECONDS, ROUNDS turns: P50 and P99, and what each proxy adds to the P99 of going straight.
With --profile, last, the ratelimit service's CPU profile under Tollway's load: where a call's time goes.
Prints figures; not a test.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from testbed.dataplane import EnvoyPorts, GatewayProcesses
from testbed.gateway import NAMESPACE, echo_model, secret, tier
from testbed.otel import Collector
from testbed.processes import Process, answers_http, free_port, start, tool_binary
from testbed.triton import infer_body, language_model_document

SLEEPER = "sleeper"
"""With --sleeping-model: a model that scales to zero, on the same fake server as echo (so always ready)."""
KEYS = {
    "rpm-tpm": "tw-bench-full-key",
    "rpm": "tw-bench-rpm-key",
    "none": "tw-bench-free-key",
    "flood": "tw-bench-flood-key",
    "sampled": "tw-bench-sampled-key",
    "guarded": "tw-bench-guarded-key",
    "checked": "tw-bench-checked-key",
    "unwatched": "tw-bench-unwatched-key",
}
"""The gateway's callers, by the limits of their tier (`flood`'s is 1 request a minute: it is refused)."""
BODY = json.dumps(infer_body(8, max_tokens=8))
PROMPT_CHECKS = [
    {"name": name, "pattern": pattern, "refuse": True}
    for name, pattern in (
        ("ignore", r"ignore\s+previous instructions"),
        ("disregard", r"disregard\s+all previous"),
        ("system", "system prompt"),
        ("developer", "developer mode"),
        ("dan", "do anything now"),
        ("jailbreak", "jail ?break"),
        ("pretend", r"pretend\s+you are"),
        ("reveal", r"reveal\s+your instructions"),
    )
]
"""Eight checks of the kind a tier would write, none of which the bench's prompts match."""
CHAT_BODY = json.dumps(
    {"model": "chat", "messages": [{"role": "user", "content": "hi there"}], "max_tokens": 8}
)
CHAT_REPLY = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": "chat@1",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi " * 8}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 8, "completion_tokens": 8, "total_tokens": 16},
    }
)
USAGE = json.dumps({"prompt_tokens": 8, "completion_tokens": 8})
REPLY = json.dumps(
    {
        "model_name": "echo",
        "model_version": "3",
        "outputs": [
            {"name": "OUTPUT", "datatype": "FP32", "shape": [1, 8], "data": [3.0] * 8},
            {"name": "USAGE", "datatype": "BYTES", "shape": [1], "data": [USAGE]},
        ],
    }
)


def static_envoy(workdir: Path, name: str, port: int, workers: int, route: dict[str, Any]) -> Process:
    """An Envoy on a static configuration: one listener on `port` whose every request takes `route`. One
    that answers itself (a direct_response) first reads the whole request: answering before the body is in
    would make Envoy close the connection after every request, and the clients would measure reconnects."""
    admin = free_port()
    clusters = []
    if "route" in route:
        upstream = route["route"]["cluster"]
        host, upstream_port = upstream.split(":")
        address = {"socket_address": {"address": host, "port_value": int(upstream_port)}}
        clusters.append(
            {
                "name": upstream,
                "type": "STATIC",
                "connect_timeout": "1s",
                "load_assignment": {
                    "cluster_name": upstream,
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
                },
            }
        )
    buffer = {
        "name": "envoy.filters.http.buffer",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
            "max_request_bytes": 65536,
        },
    }
    buffered = [buffer] if "direct_response" in route else []
    manager = {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
            ".HttpConnectionManager",
            "stat_prefix": name,
            "route_config": {
                "virtual_hosts": [
                    {"name": name, "domains": ["*"], "routes": [{"match": {"prefix": "/"}, **route}]}
                ]
            },
            "http_filters": [
                *buffered,
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                    },
                },
            ],
        },
    }
    config = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [
                {
                    "name": name,
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [{"filters": [manager]}],
                }
            ],
            "clusters": clusters,
        },
    }
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [
        str(Path(sys.executable).parent / "envoy"),
        "-c",
        str(path),
        "--base-id",
        str(port),
        "--concurrency",
        str(workers),
        "--log-level",
        "warn",
    ]
    return start(name, command, workdir / f"{name}.log", answers_http(f"http://127.0.0.1:{admin}/ready"))


def cpu_seconds(process: Process) -> float:
    """User + system CPU the process has used so far."""
    fields = Path(f"/proc/{process.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    path: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    cpu_ms_per_request: dict[str, float]


def _milliseconds(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


@dataclass(frozen=True)
class Load:
    """How wrk drives each path: one thread, `connections` keep-alive connections, for `seconds`."""

    wrk: str
    workdir: Path
    seconds: int
    connections: int


CHECK_STATUS = """function response(status)
  if status ~= 200 and status ~= %d then io.stderr:write("status " .. status .. "\\n") end
end
"""


@dataclass(frozen=True)
class Target:
    """One path: where to send, as whom, and the processes whose CPU it spends."""

    label: str
    port: int
    watched: dict[str, Process]
    key: str = ""
    refused: int = 200
    """The status it is answered with besides 200 (a caller past its limit: 429)."""
    path: str = "/v1/models/echo/infer"
    body: str = BODY

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    @property
    def headers(self) -> dict[str, str]:
        return {"content-type": "application/json", "authorization": f"Bearer {self.key}"}


def drive(load: Load, target: Target) -> Run:
    """wrk against the target; the CPU of each watched process per request meanwhile."""
    script = load.workdir / "post.lua"
    label, url, watched, headers = target.label, target.url, target.watched, target.headers
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(target.body)}\n"
        + "".join(f'wrk.headers["{name}"] = "{value}"\n' for name, value in headers.items())
        + CHECK_STATUS % target.refused
    )
    before = {name: cpu_seconds(process) for name, process in watched.items()}
    done = subprocess.run(
        [load.wrk, "-t1", f"-c{load.connections}", f"-d{load.seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    )
    spent = {name: cpu_seconds(process) - before[name] for name, process in watched.items()}
    if "status " in done.stderr:
        raise SystemExit(f"{label}: requests were refused:\n{done.stderr[:2000]}")
    out = done.stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.MULTILINE))
    return Run(
        path=label,
        requests_per_second=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        p50_ms=_milliseconds(latency["50"]),
        p99_ms=_milliseconds(latency["99"]),
        requests=requests,
        cpu_ms_per_request={name: 1000 * seconds / requests for name, seconds in spent.items()},
    )


def attack(load: Load, rate: int, target: Target) -> Run:
    """vegeta at a constant `rate` requests/s against the target for the load's seconds; the CPU of each
    watched process per request meanwhile."""
    label, watched = target.label, target.watched
    request = {
        "method": "POST",
        "url": target.url,
        "body": base64.b64encode(target.body.encode()).decode(),
        "header": {name: [value] for name, value in target.headers.items()},
    }
    targets = load.workdir / "targets.json"
    targets.write_text(json.dumps(request) + "\n")
    vegeta = str(tool_binary("vegeta", "vegeta"))
    before = {name: cpu_seconds(process) for name, process in watched.items()}
    results = subprocess.run(
        [vegeta, "attack", "-format=json", f"-targets={targets}", f"-rate={rate}/s",
         f"-duration={load.seconds}s"],
        capture_output=True,
        check=True,
    ).stdout  # fmt: skip
    spent = {name: cpu_seconds(process) - before[name] for name, process in watched.items()}
    report = json.loads(
        subprocess.run(
            [vegeta, "report", "-type=json"], input=results, capture_output=True, check=True
        ).stdout
    )
    if not set(report["status_codes"]) <= {"200", str(target.refused)}:
        raise SystemExit(f"{label}: unexpected answers: {report['status_codes']} {report['errors'][:5]}")
    requests = int(report["requests"])
    return Run(
        path=label,
        requests_per_second=float(report["rate"]),
        p50_ms=report["latencies"]["50th"] / 1e6,
        p99_ms=report["latencies"]["99th"] / 1e6,
        requests=requests,
        cpu_ms_per_request={name: 1000 * seconds / requests for name, seconds in spent.items()},
    )


PROFILED = {
    "gRPC server (the whole call)": "grpc.(*Server).handleStream",
    "  ShouldRateLimit (the service's own work)": "service.(*service).ShouldRateLimit",
    "    the request formatted as text (for tracing)": "(*RateLimitRequest).String",
    "    per-descriptor statistics": "stats.(*ManagerImpl).NewStats",
    "    Redis round trip (DoLimit)": "redis.(*fixedRateLimitCacheImpl).DoLimit",
    "Redis client connection (reads, writes)": "radix/v4/internal/proc.(*Proc).Run.func1",
    "garbage collection": "runtime.gcBgMarkWorker",
}
"""Where the ratelimit service's time goes: a label for each frame of interest (Go function names)."""


def ratelimit_profile(load: Load, target: Target, debug_port: int) -> str:
    """The ratelimit service's CPU profile (Go's pprof, from its debug port) while wrk drives `target`: the
    share of its CPU time under each frame of PROFILED, as `go tool pprof -top -cum` counts it."""
    profile = load.workdir / "ratelimit.pprof"
    url = f"http://127.0.0.1:{debug_port}/debug/pprof/profile?seconds={max(1, load.seconds - 2)}"
    with ThreadPoolExecutor(1) as pool:
        driven = pool.submit(drive, load, target)
        time.sleep(1)
        urllib.request.urlretrieve(url, profile)
        driven.result()
    top = subprocess.run(
        ["go", "tool", "pprof", "-top", "-cum", "-nodecount=400", str(profile)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    number, unit = re.search(r"Total samples = ([\d.]+)(m?s)", top).groups()  # type: ignore[union-attr]
    total = float(number) / (1000 if unit == "ms" else 1)
    lines = [f"ratelimit service, {total:.2f} s of CPU sampled; share under each frame:"]
    rows = [line.removesuffix(" (inline)").rstrip() for line in top.splitlines()]
    for label, frame in PROFILED.items():
        row = next((line for line in rows if line.endswith(frame)), None)
        share = row.split()[4] if row else "0%"  # flat, flat%, sum%, cum, cum%, name
        lines.append(f"  {label:48} {share:>7}")
    return "\n".join(lines)


def median_run(runs: list[Run]) -> Run:
    """One path's rounds as one: the median of each figure."""
    return Run(
        path=runs[0].path,
        requests_per_second=statistics.median(run.requests_per_second for run in runs),
        p50_ms=statistics.median(run.p50_ms for run in runs),
        p99_ms=statistics.median(run.p99_ms for run in runs),
        requests=sum(run.requests for run in runs),
        cpu_ms_per_request={
            name: statistics.median(run.cpu_ms_per_request[name] for run in runs)
            for name in runs[0].cpu_ms_per_request
        },
    )


def sleeping_model() -> dict[str, Any]:
    """The echo model again, under its own name, scaling to zero (minReplicas 0): it has a hold."""
    document = echo_model()
    document["metadata"] = {**document["metadata"], "name": SLEEPER, "uid": f"uid-{SLEEPER}"}
    document["spec"]["autoscaling"] = {"minReplicas": 0, "maxReplicas": 2}
    return document


def gateway(
    workdir: Path,
    upstream_port: int,
    openai_port: int,
    workers: int,
    sample_sink: str,
    *,
    denied: int,
    sleeper: bool,
) -> GatewayProcesses:
    """Tollway's gateway with a tier per entry of KEYS, its limits far above any load here: the echo model
    (KServe v2) and a chat model whose OpenAI server is the fake at `openai_port`; samples go to
    `sample_sink`; `denied` addresses in the namespace's deny list; with `sleeper`, also a model that scales
    to zero (SLEEPER, on the same fake server, so always ready), which puts the hold in every request's
    filter chain."""
    full = {"requestsPerMinute": 100_000_000, "tokensPerMinute": 1_000_000_000}
    limits: dict[str, dict[str, int]] = {
        "rpm-tpm": full,
        "rpm": {"requestsPerMinute": 100_000_000},
        "none": {},
        "flood": {"requestsPerMinute": 1},
        "sampled": full,
        "guarded": full,
        "checked": full,
        "unwatched": full,
    }
    extra: dict[str, dict[str, Any]] = {
        "sampled": {"sampling": {"sampleRate": "1"}},
        "guarded": {"network": {"allowedCidrs": ["127.0.0.0/8"], "requestsPerMinutePerIp": 100_000_000}},
        "checked": {"promptChecks": PROMPT_CHECKS},
        "unwatched": {"alerts": {"keyCompromise": {"enabled": False}}},
    }
    documents: list[dict[str, Any]] = [echo_model(), language_model_document("chat", "chat", NAMESPACE)]
    upstreams = [
        f"echo=127.0.0.1:{upstream_port}:{upstream_port}",
        f"chat=127.0.0.1:{upstream_port}:{upstream_port}:{openai_port}",
    ]
    if sleeper:
        documents.append(sleeping_model())
        upstreams.append(f"{SLEEPER}=127.0.0.1:{upstream_port}:{upstream_port}")
    models = ["echo", "chat", *([SLEEPER] if sleeper else [])]
    for name, key in KEYS.items():
        documents += [
            tier(name, 1, limits[name], models, **extra.get(name, {})),
            secret(name, name, key),
        ]
    if denied:
        # a reputation feed's size: networks no request here comes from, each checked on every request
        networks = "".join(
            f"10.{index // 65536 % 256}.{index // 256 % 256}.{index % 256}\n" for index in range(denied)
        )
        documents.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": "feed",
                    "namespace": NAMESPACE,
                    "labels": {"tollway.dev/deny-list": "true"},
                },
                "stringData": {"cidrs": networks},
            }
        )
    source = workdir / "manifests.yaml"
    source.write_text(yaml.safe_dump_all(documents))
    processes = GatewayProcesses(
        workdir=workdir,
        replicas=[EnvoyPorts.free()],
        upstreams=upstreams,
        envoy_workers=workers,
    )
    processes.write_config(source, f"--sample-sink={sample_sink}")
    processes.start_redis()
    processes.start_ratelimit()
    processes.start_envoys()
    return processes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1, help="Envoy workers of each proxy")
    parser.add_argument("--rounds", type=int, default=3, help="turns of the three paths; medians reported")
    parser.add_argument("--rate", type=int, default=1000, help="requests/s of the constant-rate runs")
    parser.add_argument(
        "--deny-list",
        type=int,
        default=0,
        help="addresses in the namespace's deny list (checked every request)",
    )
    parser.add_argument(
        "--sleeping-model",
        action="store_true",
        help="and a model that scales to zero: the hold in every request's chain, and a path to that model",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="and profile the ratelimit service under Tollway's load (needs Go)",
    )
    options = parser.parse_args()
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is missing: hack/setup installs it (Debian's package)")
    with tempfile.TemporaryDirectory(prefix="tollway-cost-") as directory:
        workdir = Path(directory)
        model_port, openai_port, bare_port = free_port(), free_port(), free_port()
        reply = {"direct_response": {"status": 200, "body": {"inline_string": REPLY}}}
        model = static_envoy(workdir, "model", model_port, 2, reply)
        chat_reply = {"direct_response": {"status": 200, "body": {"inline_string": CHAT_REPLY}}}
        openai_model = static_envoy(workdir, "openai-model", openai_port, 1, chat_reply)
        bare = static_envoy(
            workdir, "bare", bare_port, options.workers, {"route": {"cluster": f"127.0.0.1:{model_port}"}}
        )
        samples = Collector(workdir).start()
        assert samples.process is not None
        tollway = gateway(
            workdir,
            model_port,
            openai_port,
            options.workers,
            samples.grpc_address,
            denied=options.deny_list,
            sleeper=options.sleeping_model,
        )
        gateway_processes = {
            "envoy": tollway.envoys[0],
            "ratelimit": tollway.processes["ratelimit"],
            "redis": tollway.processes["redis"],
            "model": model,
        }
        targets = [
            Target("straight to the model server", model_port, {"model": model}),
            Target("bare Envoy (router only)", bare_port, {"envoy": bare, "model": model}),
            Target("Tollway's gateway", tollway.ports[0], gateway_processes, KEYS["rpm-tpm"]),
            Target("  tier with RPM only (1 call)", tollway.ports[0], gateway_processes, KEYS["rpm"]),
            Target("  tier without limits (no call)", tollway.ports[0], gateway_processes, KEYS["none"]),
            Target("  a caller past its RPM (429)", tollway.ports[0], gateway_processes, KEYS["flood"], 429),
            Target(
                "Tollway, OpenAI chat (unary)",
                tollway.ports[0],
                {**gateway_processes, "model": openai_model},
                KEYS["rpm-tpm"],
                path="/v1/chat/completions",
                body=CHAT_BODY,
            ),
            Target(
                "  tier sampling every request",
                tollway.ports[0],
                {**gateway_processes, "otelcol": samples.process},
                KEYS["sampled"],
            ),
            Target(
                "  + networks, per-address limit",
                tollway.ports[0],
                gateway_processes,
                KEYS["guarded"],
            ),
            Target("  + 8 prompt checks", tollway.ports[0], gateway_processes, KEYS["checked"]),
            Target("  without key signals", tollway.ports[0], gateway_processes, KEYS["unwatched"]),
        ]
        if options.sleeping_model:
            targets.append(
                Target(
                    "  a model that can sleep (awake)",
                    tollway.ports[0],
                    gateway_processes,
                    KEYS["rpm-tpm"],
                    path=f"/v1/models/{SLEEPER}/infer",
                )
            )
        try:
            load = Load(wrk, workdir, options.seconds, options.connections)
            closed = [[drive(load, target) for target in targets] for _ in range(options.rounds)]
            steady = [
                [attack(load, options.rate, target) for target in targets] for _ in range(options.rounds)
            ]
            profiled = (
                ratelimit_profile(load, targets[2], tollway.ratelimit_ports.debug) if options.profile else ""
            )
        finally:
            tollway.stop()
            bare.stop()
            model.stop()
            openai_model.stop()
            samples.stop()
    runs = [median_run(list(taken)) for taken in zip(*closed, strict=True)]
    at_rate = [median_run(list(taken)) for taken in zip(*steady, strict=True)]
    bare_throughput, straight_p99 = runs[1].requests_per_second, at_rate[0].p99_ms
    tables = [
        (
            f"Closed loop: wrk -t1 -c{options.connections} -d{options.seconds}s, {options.workers} Envoy "
            f"worker(s) per proxy, {os.cpu_count()} cores; medians of {options.rounds} rounds",
            runs,
            "x bare",
            lambda run: f"{run.requests_per_second / bare_throughput:8.2f}",
        ),
        (
            f"\nConstant rate: vegeta at {options.rate} req/s for {options.seconds}s (keep-alive); medians "
            f"of {options.rounds} rounds; +P99 = the P99 added to going straight",
            at_rate,
            "+P99 ms",
            lambda run: f"{run.p99_ms - straight_p99:8.2f}",
        ),
    ]
    for title, table, heading, column in tables:
        print(title)
        print_table(table, heading, column)
    if profiled:
        print(f"\n{profiled}")


def print_table(runs: list[Run], heading: str, column: Callable[[Run], str]) -> None:
    """One line per run: requests/s, `column` (8 characters) under `heading`, P50, P99, CPU per request."""
    print(f"{'path':32} {'req/s':>9} {heading:>8} {'P50 ms':>7} {'P99 ms':>7}  CPU ms per request")
    for run in runs:
        cpu = ", ".join(f"{name} {value:.3f}" for name, value in run.cpu_ms_per_request.items())
        figures = f"{run.requests_per_second:9.0f} {column(run)} {run.p50_ms:7.2f} {run.p99_ms:7.2f}"
        print(f"{run.path:32} {figures}  {cpu}")


if __name__ == "__main__":
    main()
