"""Asking Triton which versions of a model are loaded, through its HTTP API (tritonclient)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from tollway.ir.names import TRITON_KEY_HEADER
from tollway.ir.state import TritonState, VersionState

TIMEOUT_SECONDS = 2.0


def model_state(url: str, model: str, versions: Iterable[str], admin_key: str) -> TritonState:
    """The state of each listed version; unreachable (with the error) instead of an exception. The
    repository index is one of Triton's restricted APIs: `admin_key` opens it."""
    try:
        triton = triton_http.InferenceServerClient(
            url, connection_timeout=TIMEOUT_SECONDS, network_timeout=TIMEOUT_SECONDS
        )
        index: Any = triton.get_model_repository_index(headers={TRITON_KEY_HEADER: admin_key})
    except (InferenceServerException, OSError) as error:
        return TritonState(reachable=False, error=f"{url}: {error}")
    reported = {
        str(entry.get("version")): entry
        for entry in index
        if entry.get("name") == model and entry.get("version")
    }
    states = []
    for version in versions:
        entry = reported.get(version)
        if entry is None:
            states.append(VersionState(version, "MISSING", "Triton does not list this version"))
        else:
            states.append(VersionState(version, str(entry.get("state", "")), str(entry.get("reason", ""))))
    return TritonState(reachable=True, versions=tuple(states))
