#!/usr/bin/env python3
"""The gateway's cost per request beside bare Envoy, in one run:

    .venv/bin/python bench/gateway_cost.py [--seconds 10] [--connections 8] [--workers 1] [--rounds 3]

Three paths to one fake model server, each driven in turn by wrk (Debian's; one thread, CONNECTIONS
keep-alive connections, closed loop) with the same KServe v2 infer POST:

1. straight to the fake model server: an Envoy that answers every request itself with a fixed infer reply
   reporting its tokens, so the upstream is never what limits the others;
2. bare Envoy with WORKERS workers: a listener with the router only;
3. Tollway's gateway as `tollway gateway-config` renders it, with WORKERS workers: API key, request and token
   limits (reserved on the way in, settled at the end), usage counters, headers, through its ratelimit
   service and Redis; the limits far above the load.

The paths take turns, ROUNDS times (so a slow spell of the shared cores falls on all of them), and each
figure is the median of its rounds: requests/s, P50 and P99 latency, throughput as a share of bare Envoy's,
and the CPU each process spent per request (user + system, from /proc), so the cost shows where it is.
Prints figures; not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from testbed.dataplane import EnvoyPorts, GatewayProcesses
from testbed.gateway import echo_model, secret, tier
from testbed.processes import Process, answers_http, free_port, start
from testbed.triton import infer_body

KEY = "tw-bench-cost-key"
BODY = json.dumps(infer_body(8, max_tokens=8))
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
    """An Envoy on a static configuration: one listener on `port` whose every request takes `route`."""
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
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                    },
                }
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
  if status ~= 200 then io.stderr:write("status " .. status .. "\\n") end
end
"""


def drive(load: Load, label: str, url: str, watched: dict[str, Process]) -> Run:
    """wrk against `url`; the CPU of each `watched` process per request meanwhile."""
    script = load.workdir / "post.lua"
    headers = {"content-type": "application/json", "authorization": f"Bearer {KEY}"}
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(BODY)}\n"
        + "".join(f'wrk.headers["{name}"] = "{value}"\n' for name, value in headers.items())
        + CHECK_STATUS
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


def gateway(workdir: Path, upstream_port: int, workers: int) -> GatewayProcesses:
    huge = {"requestsPerMinute": 100_000_000, "tokensPerMinute": 1_000_000_000}
    documents = [echo_model(), tier("bench", 1, huge, ["echo"]), secret("bench", "bench", KEY)]
    source = workdir / "manifests.yaml"
    source.write_text(yaml.safe_dump_all(documents))
    processes = GatewayProcesses(
        workdir=workdir,
        replicas=[EnvoyPorts.free()],
        upstreams=[f"echo=127.0.0.1:{upstream_port}:{upstream_port}"],
        envoy_workers=workers,
    )
    processes.write_config(source)
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
    options = parser.parse_args()
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is missing: hack/setup installs it (Debian's package)")
    with tempfile.TemporaryDirectory(prefix="tollway-cost-") as directory:
        workdir = Path(directory)
        model_port, bare_port = free_port(), free_port()
        reply = {"direct_response": {"status": 200, "body": {"inline_string": REPLY}}}
        model = static_envoy(workdir, "model", model_port, 2, reply)
        bare = static_envoy(
            workdir, "bare", bare_port, options.workers, {"route": {"cluster": f"127.0.0.1:{model_port}"}}
        )
        tollway = gateway(workdir, model_port, options.workers)
        try:
            path = "/v1/models/echo/infer"
            load = Load(wrk, workdir, options.seconds, options.connections)
            paths = [
                ("straight to the model server", model_port, {"model": model}),
                ("bare Envoy (router only)", bare_port, {"envoy": bare, "model": model}),
                ("Tollway's gateway", tollway.ports[0],
                 {"envoy": tollway.envoys[0], "ratelimit": tollway.processes["ratelimit"],
                  "redis": tollway.processes["redis"], "model": model}),
            ]  # fmt: skip
            rounds = [
                [
                    drive(load, label, f"http://127.0.0.1:{port}{path}", watched)
                    for label, port, watched in paths
                ]
                for _ in range(options.rounds)
            ]
        finally:
            tollway.stop()
            bare.stop()
            model.stop()
    runs = [median_run(list(taken)) for taken in zip(*rounds, strict=True)]
    baseline = runs[1].requests_per_second
    print(
        f"wrk -t1 -c{options.connections} -d{options.seconds}s, {options.workers} Envoy worker(s) per proxy, "
        f"{os.cpu_count()} cores; medians of {options.rounds} rounds"
    )
    print(f"{'path':32} {'req/s':>9} {'x bare':>7} {'P50 ms':>7} {'P99 ms':>7}  CPU ms per request")
    for run in runs:
        cpu = ", ".join(f"{name} {value:.3f}" for name, value in run.cpu_ms_per_request.items())
        print(
            f"{run.path:32} {run.requests_per_second:9.0f} {run.requests_per_second / baseline:7.2f} "
            f"{run.p50_ms:7.2f} {run.p99_ms:7.2f}  {cpu}"
        )


if __name__ == "__main__":
    main()
