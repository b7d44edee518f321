"""The gateway's data path under steady load while one component is SIGKILLed and started again: an Envoy
replica, the ratelimit service, Redis. Shared by tests/integration/test_gateway_faults.py (what the gateway
does during and after each outage) and bench/gateway_faults.py (failed requests, time until the limits
count exactly again).

Limits are the ratelimit service's fixed windows of a calendar minute, counted in Redis, which writes each
count to its append-only file (as the operator renders it), so a counter outlives a Redis restart.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed import dataplane
from testbed.gateway import Bed, bed, echo_model, secret, tier
from testbed.processes import free_port
from testbed.triton import infer_body

LIMIT = 5
"""requestsPerMinute of the counted tiers."""
HUGE = 10_000_000
"""requestsPerMinute of the load's tiers: limited (so every request asks the ratelimit service), never hit."""
COUNTED = tuple(f"c{index}" for index in range(80))
"""Consumers of the counted tier (fail open), each used for one count from zero."""
CLOSED = tuple(f"d{index}" for index in range(20))
"""Consumers of the counted tier that fails closed."""
PATH = "/v1/models/echo/infer"
BODY = infer_body(values=2, max_tokens=2)


def key(consumer: str) -> str:
    return f"tw-fault-{consumer}-key"


def manifests(_: Bed) -> list[dict[str, Any]]:
    return [
        echo_model(),
        tier("open", 1, {"requestsPerMinute": HUGE}, ["echo"]),
        tier("closed", 1, {"requestsPerMinute": HUGE, "failOpen": False}, ["echo"]),
        tier("counted", 2, {"requestsPerMinute": LIMIT}, ["echo"]),
        tier("counted-closed", 2, {"requestsPerMinute": LIMIT, "failOpen": False}, ["echo"]),
        secret("load-open", "open", key("load-open")),
        secret("load-closed", "closed", key("load-closed")),
        *(secret(name, "counted", key(name)) for name in COUNTED),
        *(secret(name, "counted-closed", key(name)) for name in CLOSED),
    ]


@contextmanager
def fault_bed(workdir: Path) -> Iterator[Bed]:
    """The gateway bed (Triton, Redis, the ratelimit service, two Envoys) on this module's tiers."""
    with bed(workdir, manifests) as started:
        yield started


class Consumers:
    """Hands out each counted consumer once: a count that starts from zero."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.left = list(names)

    def take(self) -> str:
        assert self.left, "no unused consumer left: add more to the bed's manifests"
        return self.left.pop(0)


def send(test_bed: Bed, consumer: str, replica: int) -> int:
    """One request as `consumer` to a replica; its status (0: no answer, the connection refused or cut)."""
    try:
        return test_bed.call(PATH, key=key(consumer), body=BODY, replica=replica).status
    except OSError:
        return 0


def count(test_bed: Bed, consumer: str, requests: int) -> list[int]:
    """`requests` in a row as `consumer`, alternating between the two replicas; their statuses."""
    return [send(test_bed, consumer, index % 2) for index in range(requests)]


def exact(statuses: list[int], limit: int = LIMIT) -> bool:
    """Whether a count from zero went exactly as the limit says: `limit` admitted, then only 429."""
    return statuses == [200] * limit + [429] * (len(statuses) - limit)


def seconds_left_in_minute() -> float:
    return 60 - time.time() % 60


def room_in_window(needed: float) -> None:
    """Wait for the next calendar minute (a fresh window) when fewer than `needed` seconds are left."""
    if seconds_left_in_minute() < needed:
        time.sleep(seconds_left_in_minute() + 0.2)


@dataclass(frozen=True)
class Sample:
    at: float
    """time.monotonic() when the request was sent."""
    tier: str
    replica: int
    status: int
    """0: no answer (refused, reset)."""


@dataclass
class Load:
    """Steady load: per load tier and replica one client sending `rate` requests per second on a keep-alive
    connection (a new one after a failure), every outcome recorded."""

    test_bed: Bed
    rate: float = 10.0
    samples: list[Sample] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for tier_name in ("open", "closed"):
            for replica in range(len(self.test_bed.replicas)):
                thread = threading.Thread(target=self._client, args=(tier_name, replica), daemon=True)
                thread.start()
                self.threads.append(thread)

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join()

    def _client(self, tier_name: str, replica: int) -> None:
        port = self.test_bed.replicas[replica].listener
        headers = {"authorization": f"Bearer {key('load-' + tier_name)}", "content-type": "application/json"}
        body = json.dumps(BODY).encode()
        connection: http.client.HTTPConnection | None = None
        next_at = time.monotonic()
        while not self.stopping.is_set():
            next_at += 1 / self.rate
            sent = time.monotonic()
            try:
                connection = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                connection.request("POST", PATH, body=body, headers=headers)
                response = connection.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                status = 0
                if connection is not None:
                    connection.close()
                connection = None
            self.samples.append(Sample(sent, tier_name, replica, status))
            self.stopping.wait(max(0.0, next_at - time.monotonic()))  # pacing, not a wait for a condition
        if connection is not None:
            connection.close()

    def between(self, start: float, end: float) -> list[Sample]:
        return [sample for sample in list(self.samples) if start <= sample.at <= end]

    def seen(self, tier_name: str, status: int, since: float) -> bool:
        """Whether the load of `tier_name` got `status` since `since` (for `eventually`)."""
        return any(
            sample.tier == tier_name and sample.status == status for sample in self.between(since, 1e18)
        )


@contextmanager
def steady_load(test_bed: Bed, rate: float = 10.0) -> Iterator[Load]:
    load = Load(test_bed, rate)
    load.start()
    try:
        yield load
    finally:
        load.stop()


COMPONENTS = ("envoy", "ratelimit", "redis")


def kill(test_bed: Bed, component: str) -> None:
    """SIGKILL Envoy replica 1, the ratelimit service or Redis."""
    process = test_bed.envoys[1] if component == "envoy" else test_bed.processes[component]
    process.kill()


def restart(test_bed: Bed, component: str) -> None:
    """Start the killed component again on the same ports and files; returns once it answers."""
    if component != "envoy":
        getattr(test_bed, f"start_{component}")()
        return
    # GatewayProcesses.start_envoys starts every replica; start replica 1 alone, with a base id of its own
    # (the killed one's shared memory is not released by a SIGKILL).
    replica = test_bed.replicas[1]
    config = test_bed.replica_dir(1) / "envoy"
    test_bed.envoys[1] = dataplane.envoy(test_bed.workdir, config, replica.listener, base_id=free_port())


@dataclass(frozen=True)
class Outage:
    component: str
    killed: float
    restarted: float
    """When the restarted component answered (monotonic)."""
    exact_again: float
    """When a count from zero first went exactly as the limit says (monotonic)."""
    counts_until_exact: list[list[int]]
    """The counts tried (fresh consumers) from the restart until one was exact."""

    def failures(self, load: Load) -> dict[str, Counter[int]]:
        """Per load tier, the load's non-200 outcomes from the kill until the limits were exact again."""
        found: dict[str, Counter[int]] = {"open": Counter(), "closed": Counter()}
        for sample in load.between(self.killed, self.exact_again):
            if sample.status != 200:
                found[sample.tier][sample.status] += 1
        return found

    def sent(self, load: Load) -> Counter[str]:
        return Counter(sample.tier for sample in load.between(self.killed, self.exact_again))


def until_exact(test_bed: Bed, consumers: Consumers, timeout: float = 60.0) -> tuple[float, list[list[int]]]:
    """Counts from zero (each a fresh consumer, in a window with room for it) until one is exact; when it
    was and the counts tried. AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    tried: list[list[int]] = []
    while time.monotonic() < deadline:
        room_in_window(5)
        statuses = count(test_bed, consumers.take(), LIMIT + 2)
        tried.append(statuses)
        if exact(statuses):
            return time.monotonic(), tried
    raise AssertionError(f"limits not exact {timeout:.0f}s after the restart; counts: {tried}")
