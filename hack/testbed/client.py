"""A request as a client sends it, and what it measures: one `Reply` for the tests, the demo and the
benchmarks, and one way to take a latency percentile."""

from __future__ import annotations

import json
import math
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    """Header names in lower case."""
    body: bytes
    seconds: float
    """From sending the request to having read the whole body."""

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    url: str,
    *,
    data: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    context: ssl.SSLContext | None = None,
    timeout: float = 60,
) -> Reply:
    """GET (or POST `data`) and the reply, an HTTP error status included."""
    sent = urllib.request.Request(url, data=data, headers=dict(headers or {}))
    began = time.perf_counter()
    try:
        with urllib.request.urlopen(sent, timeout=timeout, context=context) as response:
            status, received, body = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, received, body = error.code, error.headers, error.read()
    seconds = time.perf_counter() - began
    return Reply(status, {name.lower(): value for name, value in received.items()}, body, seconds)


def percentile(values: Sequence[float], share: float) -> float:
    """The nearest-rank percentile: the smallest value that at least `share` of the values do not exceed
    (of 100 values, P99 is the 99th smallest and P50 the 50th; never an interpolation)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]
