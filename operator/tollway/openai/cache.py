"""The response cache's rules, as plain functions: which requests may be answered from it (those that do not
sample), the key an answer is stored under, and an entry's encoding. No I/O: the stores
(`tollway.openai.store`) do that."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from tollway.openai.protocol import Generation, Usage

UNSHAPING = frozenset({"user", "metadata", "store"})
"""Request fields known not to change the answer's text (beyond those a Generation already carries in its
own terms): left out of the key, so that they do not split the cache. Every other field is in it, unknown
ones included."""


def _canonical(value: Any) -> Any:
    """`value` with each whole float as the integer it equals (JSON's 1 and 1.0 are one number)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {name: _canonical(item) for name, item in value.items()}
    if isinstance(value, list):
        return [_canonical(item) for item in value]
    return value


def _whole_number(value: object) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, float) and value.is_integer()
    )


def samples(options: Mapping[str, Any]) -> bool:
    """Whether a request samples, and so may answer differently each time: unless its `temperature` is 0 or
    it gives an integer `seed`. OpenAI's default temperature is 1, so a request with neither samples."""
    temperature = options.get("temperature", 1)
    greedy = isinstance(temperature, int | float) and not isinstance(temperature, bool) and temperature == 0
    return not (greedy or _whole_number(options.get("seed")))


def cacheable(generation: Generation, *, sampled: bool) -> bool:
    """Whether `generation`'s answer may be served from the cache and stored in it (`sampled`: even if it
    samples, as --cache-sampled allows)."""
    return sampled or not samples(generation.options)


def cache_key(revision: str, model: str, version: str, generation: Generation) -> str:
    """sha256 (hex) of everything that may change the answer: the model's configuration (`revision`, the
    operator's digest of its config, versions and chat template), the Triton `model`, the `version` the
    gateway resolved ("" when none), the kind, the prompt the model is actually asked, the resolved
    max_tokens and the request's other fields but those known not to matter. Key order, whitespace and a
    number's spelling (1 or 1.0) do not count."""
    shaping = {name: value for name, value in generation.options.items() if name not in UNSHAPING}
    described = {
        "revision": revision,
        "model": model,
        "version": version,
        "kind": generation.kind,
        "prompt": generation.prompt,
        "max_tokens": generation.max_tokens,
        "options": _canonical(shaping),
    }
    canonical = json.dumps(described, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Entry:
    """A complete answer as stored: enough to replay it streamed or whole."""

    pieces: tuple[str, ...]
    """The text, in the pieces the model made it in (a streamed replay sends a chunk each)."""
    version: str
    """The version that served it (Triton's model_version)."""
    usage: Usage | None
    """The model's counts (None when nobody counted: the replay then carries none either)."""
    finish_reason: str
    stored_at: float
    """When it was stored (seconds since the epoch: replicas sharing a store compare it)."""

    def encode(self) -> bytes:
        usage = None if self.usage is None else [self.usage.prompt_tokens, self.usage.completion_tokens]
        entry = {
            "pieces": list(self.pieces),
            "version": self.version,
            "usage": usage,
            "finish_reason": self.finish_reason,
            "stored_at": self.stored_at,
        }
        return json.dumps(entry, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> Entry | None:
        """The entry `data` encodes; None when it does not parse as one (a miss, never an error)."""
        try:
            entry = json.loads(data)
        except (ValueError, RecursionError):
            return None
        if not isinstance(entry, dict):
            return None
        pieces, version, usage = entry.get("pieces"), entry.get("version"), entry.get("usage")
        reason, stored_at = entry.get("finish_reason"), entry.get("stored_at")
        if not (
            isinstance(pieces, list)
            and len(pieces) > 0
            and all(isinstance(piece, str) for piece in pieces)
            and isinstance(version, str)
            and isinstance(reason, str)
            and isinstance(stored_at, int | float)
            and not isinstance(stored_at, bool)
            and (usage is None or _counts(usage))
        ):
            return None
        counted = None if usage is None else Usage(usage[0], usage[1])
        return cls(tuple(pieces), version, counted, reason, float(stored_at))

    def age(self, now: float) -> float:
        """Seconds since it was stored (never below 0: replicas' clocks may differ a little)."""
        return max(0.0, now - self.stored_at)


def _counts(usage: object) -> TypeGuard[list[int]]:
    """Whether `usage` is a stored [prompt, completion] pair of counts."""
    return (
        isinstance(usage, list)
        and len(usage) == 2
        and all(isinstance(count, int) and not isinstance(count, bool) and count >= 0 for count in usage)
    )
