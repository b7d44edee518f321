"""Asking Triton which versions of a model are loaded: its model repository index (POST
/v2/repository/index, Triton's model repository extension), one JSON call made with the standard library.
tritonclient.http would make it too, but loads gevent and numpy with it, about 20 MiB of every operator
process for this one call (README: Benchmarks). And how many requests wait in one pod's queue, from its
metrics page, for the burst floor."""

from __future__ import annotations

import http.client
import json
import math
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from typing import Any

from tollway.ir.names import TRITON_KEY_HEADER
from tollway.ir.state import TritonState, VersionState

TIMEOUT_SECONDS = 2.0
QUEUE_TIMEOUT_SECONDS = 1.0
"""Within the burst floor's 2 s cadence."""
PENDING = "nv_inference_pending_request_count{"
METRICS_PAGE_BYTES = 2 << 20
"""Triton's page for a hundred models is about 0.5 MiB."""


def model_state(url: str, model: str, versions: Iterable[str], admin_key: str) -> TritonState:
    """The state of each listed version of the Triton at `url` (HOST:PORT, its HTTP port); unreachable (with
    the error) instead of an exception. The repository index is one of Triton's restricted APIs:
    `admin_key` opens it."""
    try:
        index = _repository_index(url, admin_key)
    except (OSError, http.client.HTTPException, ValueError) as error:  # ValueError: not the index's JSON
        return TritonState(reachable=False, error=f"{url}: {error}")
    reported = {
        str(entry.get("version")): entry
        for entry in index
        if isinstance(entry, dict) and entry.get("name") == model and entry.get("version")
    }
    states = []
    for version in versions:
        entry = reported.get(version)
        if entry is None:
            states.append(VersionState(version, "MISSING", "Triton does not list this version"))
        else:
            states.append(VersionState(version, str(entry.get("state", "")), str(entry.get("reason", ""))))
    return TritonState(reachable=True, versions=tuple(states))


def _repository_index(url: str, admin_key: str) -> list[Any]:
    request = urllib.request.Request(
        f"http://{url}/v2/repository/index",
        data=b"{}",
        headers={"content-type": "application/json", TRITON_KEY_HEADER: admin_key},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            index = json.loads(response.read())
    except urllib.error.HTTPError as refused:  # Triton's error body says why: {"error": "..."}
        raise OSError(f"[{refused.code}] {_said(refused.read())}") from refused
    if not isinstance(index, list):
        raise ValueError("the repository index is not a list")
    return index


def _said(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace")[:200]


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A pod's metrics page is read where it is or not at all: a pod never sends the operator elsewhere."""

    def redirect_request(self, *_: Any) -> None:
        return None


#: No redirects, and no proxy from the environment: the page is on the pod's own address.
_READER = urllib.request.build_opener(_NoRedirects, urllib.request.ProxyHandler({}))


def queue_depth(url: str, model: str) -> float | None:
    """The requests waiting in one Triton pod's queue for `model`, from its metrics page at `url`; None
    when the page cannot be read whole within `QUEUE_TIMEOUT_SECONDS` (a slow page holds no read longer),
    is larger than `METRICS_PAGE_BYTES`, or does not say."""
    deadline = time.monotonic() + QUEUE_TIMEOUT_SECONDS
    try:
        with _READER.open(url, timeout=QUEUE_TIMEOUT_SECONDS) as response:
            if response.status != 200:
                return None
            chunks: list[bytes] = []
            size = 0
            while chunk := response.read1(64 << 10):  # what one receive got: the deadline is checked
                size += len(chunk)
                if size > METRICS_PAGE_BYTES or time.monotonic() > deadline:
                    return None
                chunks.append(chunk)
    except (OSError, http.client.HTTPException):
        return None
    return pending(b"".join(chunks).decode(errors="replace"), model)


def pending(page: str, model: str) -> float | None:
    """nv_inference_pending_request_count of `model` on a Triton metrics page, over its versions (0 when the
    page lists none: nothing loaded waits); None when a sample is not a count (not a number, negative, NaN
    or infinite)."""
    selected = f'model="{model}"'
    waiting = 0.0
    for line in page.splitlines():
        labels, _, sample = line.partition("}")
        if line.startswith(PENDING) and selected in labels:
            try:
                value = float(sample.split()[0])
            except (ValueError, IndexError):
                return None
            if not math.isfinite(value) or value < 0:
                return None
            waiting += value
    return waiting
