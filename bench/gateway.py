#!/usr/bin/env python3
"""Gateway benchmark on the real data path (Triton, Redis, the ratelimit service, two Envoys), one run:

    .venv/bin/python bench/gateway.py [--rate 50] [--seconds 10] [--clients 16]

1. Added latency: the same small infer request at a fixed rate (open loop), straight to Triton and through
   the gateway (API-key auth, RPM and TPM descriptors checked and charged, priority injection, headers);
   P50/P99 of both and the difference.
2. Maximum sustained throughput through one Envoy: CLIENTS closed-loop clients on keep-alive connections
   for SECONDS; requests/s and P99. The clients are Python on the same 2 cores, so this is a floor.
3. TPM overshoot: 64 concurrent clients against a 2000 tokens/minute limit, each sending until refused;
   tokens the model reported for admitted requests ÷ the limit (1.0 = exactly the limit).
Prints figures; not a pass/fail test.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from testbed.client import percentile
from testbed.gateway import Bed, bed, echo_model, secret, tier
from testbed.triton import infer_body

KEY, TPM_KEY = "tw-bench-key", "tw-bench-tpm-key"
BODY = json.dumps(infer_body(8, max_tokens=8)).encode()


def manifests(_: Bed) -> list[dict[str, Any]]:
    huge = {"requestsPerMinute": 10_000_000, "tokensPerMinute": 1_000_000_000}
    return [
        echo_model(),
        tier("bench", 1, huge, ["echo"]),
        tier("tpm", 2, {"tokensPerMinute": 2000}, ["echo"]),
        secret("bench", "bench", KEY),
        secret("tpm", "tpm", TPM_KEY),
    ]


class Client:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, port: int, path: str, key: str | None) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.path, self.headers = path, {"content-type": "application/json"}
        if key:
            self.headers["authorization"] = f"Bearer {key}"

    def send(self, body: bytes = BODY) -> tuple[int, bytes, float]:
        started = time.perf_counter()
        self.connection.request("POST", self.path, body=body, headers=self.headers)
        response = self.connection.getresponse()
        data = response.read()
        return response.status, data, time.perf_counter() - started


def fixed_rate(port: int, path: str, key: str | None, rate: float, seconds: float) -> list[float]:
    """Open loop: a request every 1/rate s (each on a pooled connection); latencies of the 200s, in ms."""
    latencies: list[float] = []
    local = threading.local()
    lock = threading.Lock()

    def one() -> None:
        if not hasattr(local, "client"):
            local.client = Client(port, path, key)
        status, _, took = local.client.send()
        if status == 200:
            with lock:
                latencies.append(took * 1000)

    with ThreadPoolExecutor(32) as pool:
        start = time.perf_counter()
        for index in range(int(rate * seconds)):
            delay = start + index / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one)
    return latencies


def throughput(
    port: int, path: str, key: str | None, clients: int, seconds: float
) -> tuple[float, float, int]:
    stop = time.perf_counter() + seconds
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def loop() -> None:
        client = Client(port, path, key)
        while time.perf_counter() < stop:
            status, _, took = client.send()
            with lock:
                if status == 200:
                    latencies.append(took * 1000)
                else:
                    errors[0] += 1

    threads = [threading.Thread(target=loop) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(latencies) / seconds, percentile(latencies, 0.99), errors[0]


def overshoot(test_bed: Bed) -> tuple[int, int, int]:
    left = 60 - time.time() % 60
    if left < 40:
        time.sleep(left + 0.2)
    admitted: list[int] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        connection = Client(test_bed.ports[index % 2], "/v1/models/echo/infer", TPM_KEY)
        while True:
            status, data, _ = connection.send()
            if status != 200:
                return
            usage = json.loads(
                next(out for out in json.loads(data)["outputs"] if out["name"] == "USAGE")["data"][0]
            )
            with lock:
                admitted.append(usage["prompt_tokens"] + usage["completion_tokens"])

    with ThreadPoolExecutor(64) as pool:
        list(pool.map(client, range(64)))
    return sum(admitted), len(admitted), math.ceil(len(BODY) / 4) + 8


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=16)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir, bed(Path(workdir), manifests) as test_bed:
        triton_port = int(test_bed.triton.http.rsplit(":", 1)[1])
        for port, path, key in (
            (triton_port, "/v2/models/echo/versions/3/infer", None),
            (test_bed.ports[0], "/v1/models/echo/infer", KEY),
        ):
            fixed_rate(port, path, key, arguments.rate, 2)  # warm-up
        direct = fixed_rate(
            triton_port, "/v2/models/echo/versions/3/infer", None, arguments.rate, arguments.seconds
        )
        through = fixed_rate(
            test_bed.ports[0], "/v1/models/echo/infer", KEY, arguments.rate, arguments.seconds
        )
        print(
            f"fixed rate {arguments.rate:.0f} req/s for {arguments.seconds:.0f} s, "
            "8-value infer, HTTP/1.1 keep-alive"
        )
        print(f"  {'':26}{'P50 ms':>9}{'P99 ms':>9}{'n':>7}")
        for name, values in (("Triton direct", direct), ("through the gateway", through)):
            print(f"  {name:26}{percentile(values, 0.5):9.2f}{percentile(values, 0.99):9.2f}{len(values):7d}")
        p50 = percentile(through, 0.5) - percentile(direct, 0.5)
        p99 = percentile(through, 0.99) - percentile(direct, 0.99)
        print(f"  {'added by the gateway':26}{p50:9.2f}{p99:9.2f}")
        rps, p99_max, errors = throughput(
            test_bed.ports[0], "/v1/models/echo/infer", KEY, arguments.clients, arguments.seconds
        )
        print(
            f"max sustained through one Envoy: {rps:.0f} req/s, P99 {p99_max:.1f} ms, "
            f"{errors} non-200 ({arguments.clients} clients)"
        )
        direct_rps, direct_p99, _ = throughput(
            triton_port, "/v2/models/echo/versions/3/infer", None, arguments.clients, arguments.seconds
        )
        print(f"  the same load straight to Triton: {direct_rps:.0f} req/s, P99 {direct_p99:.1f} ms")
        tokens, requests, reservation = overshoot(test_bed)
        print(
            f"TPM overshoot, 64 concurrent clients, limit 2000: {requests} requests admitted, "
            f"{tokens} tokens used = {tokens / 2000:.2f} x the limit; charged (reservations of "
            f"{reservation}) {requests * reservation} = {requests * reservation / 2000:.2f} x the limit"
        )


if __name__ == "__main__":
    main()
