"""The response cache the server asks (`ResponseCache`) and where it keeps answers: in this process
(`PodStore`, an LRU bounded in bytes) or in a Redis that all the model's replicas share (`RedisStore`, whose
size and eviction are Redis's own). Best effort: a store that fails, is slow or answers garbage makes the
request a miss, with a warning now and then, never a failed request."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from tollway.openai.cache import Entry, cache_key, cacheable
from tollway.openai.protocol import Generation, Usage

log = logging.getLogger("tollway.openai")

CACHE_HEADER = "x-tollway-cache"
"""From the gateway, `off`: the caller's tier opted out of the response cache (the gateway drops the header
from what clients send). In every answer of a server with a cache: what the cache did (CacheState)."""
CacheState = Literal["hit", "miss", "skip", "off"]
"""What the cache did for a request, as the x-tollway-cache response header says it: `hit` (answered from
it), `miss` (looked up, not found; stored if complete), `skip` (not cacheable: it samples, or was refused
before it could be looked up), `off` (the caller's tier opted out: neither read nor written)."""
REDIS_PREFIX = "tollway:cache:"
"""Makes the cache's keys recognisable in a Redis that may hold other things."""
OPERATION_TIMEOUT_S = 0.25
"""The longest a store's get or put may take before the request goes on as a miss."""
WARNING_INTERVAL_S = 60.0
STORE_FAILURES = (RedisError, OSError, TimeoutError)


class Store(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, value: bytes, ttl_seconds: int) -> None: ...

    async def close(self) -> None: ...


class PodStore:
    """Entries in this process, the least recently used dropped first once their encoded sizes would exceed
    `max_bytes`; an entry older than its ttl is gone."""

    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self.clock = clock
        self.entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        """Each key's value and when it expires, least recently used first."""
        self.size = 0

    async def get(self, key: str) -> bytes | None:
        found = self.entries.get(key)
        if found is None:
            return None
        value, expires_at = found
        if self.clock() >= expires_at:
            self._drop(key)
            return None
        self.entries.move_to_end(key)
        return value

    async def put(self, key: str, value: bytes, ttl_seconds: int) -> None:
        self._drop(key)
        if len(value) > self.max_bytes:
            return
        while self.size + len(value) > self.max_bytes:
            self._drop(next(iter(self.entries)))
        self.entries[key] = (value, self.clock() + ttl_seconds)
        self.size += len(value)

    def _drop(self, key: str) -> None:
        found = self.entries.pop(key, None)
        if found is not None:
            self.size -= len(found[0])

    async def close(self) -> None:
        self.entries.clear()
        self.size = 0


class RedisStore:
    """Entries in Redis under `tollway:cache:KEY`, each written with `SET key value EX ttl`."""

    def __init__(self, url: str, password: str | None) -> None:
        # no retries: a Redis that is down costs each request one short attempt, not a backoff
        self.client = Redis.from_url(
            url,
            password=password,
            socket_timeout=OPERATION_TIMEOUT_S,
            socket_connect_timeout=OPERATION_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
        )

    async def get(self, key: str) -> bytes | None:
        value = await self.client.get(REDIS_PREFIX + key)
        return value if isinstance(value, bytes) else None

    async def put(self, key: str, value: bytes, ttl_seconds: int) -> None:
        await self.client.set(REDIS_PREFIX + key, value, ex=ttl_seconds)

    async def close(self) -> None:
        await self.client.aclose()


@dataclass(frozen=True)
class CacheSettings:
    """The cache as the command line asks for it (--cache-*)."""

    store: str
    """`pod` or `redis://HOST:PORT`."""
    ttl_seconds: int = 3600
    sampled: bool = False
    """Whether requests that sample are cached too."""
    revision: str = ""
    """The operator's digest of the model's config, versions and chat template: part of every key."""
    pod_bytes: int = 268435456
    redis_password: str | None = field(default=None, repr=False)

    def open(self) -> Store:
        """The store (made inside the event loop that uses it: Redis's asyncio client belongs to one)."""
        if self.store == "pod":
            return PodStore(self.pod_bytes)
        return RedisStore(self.store, self.redis_password)


@dataclass(frozen=True)
class Lookup:
    """What the cache did for one request."""

    state: CacheState | None
    """None: the server has no cache (and says nothing about it)."""
    key: str | None = None
    """Where its answer is to be stored once complete (a miss only)."""
    entry: Entry | None = None
    """The stored answer (a hit only)."""
    age: int = 0
    """A hit's seconds since it was stored."""

    def headers(self) -> dict[str, str]:
        if self.state is None:
            return {}
        found: dict[str, str] = {CACHE_HEADER: self.state}
        return {**found, "age": str(self.age)} if self.state == "hit" else found

    def usage(self, usage: Usage | None) -> Usage | None:
        """`usage` saying how much of the prompt came from the cache: all of it on a hit, none on a miss."""
        if usage is None or self.state not in ("hit", "miss"):
            return usage
        cached = usage.prompt_tokens if self.state == "hit" else 0
        return Usage(usage.prompt_tokens, usage.completion_tokens, cached)


class ResponseCache:
    """Looks answers up and keeps complete ones, never failing a request: a store's failure is a miss."""

    def __init__(self, settings: CacheSettings, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.warnings = Warnings(WARNING_INTERVAL_S)

    async def look_up(self, model: str, version: str, generation: Generation) -> Lookup:
        """`generation`'s answer from the store when it is cacheable and there, fresh and well formed."""
        if not cacheable(generation, sampled=self.settings.sampled):
            return Lookup("skip")
        key = cache_key(self.settings.revision, model, version, generation)
        try:
            found = await asyncio.wait_for(self.store.get(key), OPERATION_TIMEOUT_S)
        except STORE_FAILURES as error:
            self.warnings.warn("the response cache could not be read (a miss): %r", error)
            return Lookup("miss", key)
        entry = None if found is None else Entry.decode(found)
        if found is not None and entry is None:
            self.warnings.warn("the response cache held an entry that does not parse (a miss): %s", key)
        if entry is None or entry.age(self.clock()) > self.settings.ttl_seconds:
            return Lookup("miss", key)
        return Lookup("hit", key, entry, int(entry.age(self.clock())))

    async def keep(
        self, lookup: Lookup, pieces: list[str], version: str, usage: Usage | None, finish_reason: str
    ) -> None:
        """Stores a complete answer under a miss's key (nothing for any other lookup)."""
        if lookup.state != "miss" or lookup.key is None:
            return
        stored = Entry(tuple(pieces) or ("",), version, usage, finish_reason, self.clock())
        try:
            await asyncio.wait_for(
                self.store.put(lookup.key, stored.encode(), self.settings.ttl_seconds), OPERATION_TIMEOUT_S
            )
        except STORE_FAILURES as error:
            self.warnings.warn("the response cache could not be written: %r", error)

    async def close(self) -> None:
        try:
            await self.store.close()
        except STORE_FAILURES as error:
            log.warning("the response cache did not close cleanly: %r", error)


class Warnings:
    """Logs a warning at most once every `interval` seconds, saying how many it held back meanwhile: a store
    that is down would otherwise log once per request."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self.next_at = float("-inf")
        self.held_back = 0

    def warn(self, message: str, *args: object) -> None:
        now = self.clock()
        if now < self.next_at:
            self.held_back += 1
            return
        suffix = f" ({self.held_back} cache warnings held back since the last)" if self.held_back else ""
        log.warning(message + suffix, *args)
        self.next_at, self.held_back = now + self.interval, 0
