"""The model-side response cache in isolation: which requests it may answer (those that do not sample), the
key (equal for equivalent requests, different for anything that may change the answer), the stored entry,
the pod store's LRU bound and TTL, and the cache's best effort when its store fails."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from tollway import cli
from tollway.openai.cache import Entry, cache_key, cacheable, samples
from tollway.openai.protocol import ChatTemplate, Generation, Usage, read_request
from tollway.openai.store import (
    CacheSettings,
    Lookup,
    PodStore,
    ResponseCache,
    Warnings,
)

TEMPLATE = ChatTemplate("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}")
GREEDY = {"temperature": 0}


def chat(**fields: Any) -> Generation:
    request = {"model": "assistant", "messages": [{"role": "user", "content": "hi"}], **fields}
    return read_request("chat", json.dumps(request).encode(), 256, TEMPLATE)


def key(generation: Generation, revision: str = "r1", version: str = "1") -> str:
    return cache_key(revision, "assistant", version, generation)


def test_equivalent_requests_share_a_key() -> None:
    written = b'{"model":"assistant","messages":[{"role":"user","content":"hi"}],"temperature":0,"top_p":1}'
    reordered = b"""{ "top_p": 1.0, "temperature": 0.0,
        "messages": [ {"content": "hi", "role": "user"} ], "model": "assistant" }"""
    first, second = (read_request("chat", body, 256, TEMPLATE) for body in (written, reordered))
    assert key(first) == key(second)
    nested = chat(temperature=0, response_format={"type": "json_schema", "json_schema": {"a": 1, "b": [2.0]}})
    reordered_nested = chat(
        response_format={"json_schema": {"b": [2], "a": 1.0}, "type": "json_schema"}, temperature=0
    )
    assert key(nested) == key(reordered_nested)


def test_fields_that_do_not_change_the_text_do_not_split_the_cache() -> None:
    plain = key(chat(**GREEDY))
    assert key(chat(**GREEDY, stream=True, stream_options={"include_usage": True})) == plain
    assert key(chat(**GREEDY, user="u-1", metadata={"run": "a"}, store=True, n=1)) == plain
    # the model's default max_tokens and the same number asked for are the same request
    assert key(chat(**GREEDY, max_tokens=256)) == plain
    assert key(chat(**GREEDY, max_completion_tokens=256, max_tokens=9)) == plain


@pytest.mark.parametrize(
    "change",
    [
        {"temperature": 0.5},
        {"top_p": 0.9},
        {"seed": 7},
        {"stop": ["\n"]},
        {"presence_penalty": 0.1},
        {"frequency_penalty": 0.1},
        {"logit_bias": {"50256": -100}},
        {"response_format": {"type": "json_object"}},
        {"tools": [{"type": "function", "function": {"name": "f"}}]},
        {"a_field_nobody_knows": True},
        {"max_tokens": 12},
        {"max_completion_tokens": 12},
        {"messages": [{"role": "user", "content": "hi!"}]},
        {"messages": [{"role": "system", "content": "hi"}]},  # the same text, another role: another prompt
    ],
    ids=lambda change: next(iter(change)),
)
def test_a_change_in_anything_that_may_change_the_answer_misses(change: dict[str, Any]) -> None:
    assert key(chat(**{**GREEDY, **change})) != key(chat(**GREEDY))


def test_the_revision_the_version_the_model_and_the_kind_are_in_the_key() -> None:
    generation = chat(**GREEDY)
    assert key(generation, revision="r2") != key(generation)
    assert key(generation, version="2") != key(generation)
    assert key(generation, version="") != key(generation)
    assert cache_key("r1", "other", "1", generation) != key(generation)
    completion = read_request("completion", b'{"model":"w","prompt":"<|user|>hi\\n"}', 256)
    assert completion.prompt == generation.prompt
    assert key(completion) != key(generation)


def test_requests_that_sample_are_not_cacheable_unless_allowed() -> None:
    assert samples({})  # OpenAI's default temperature is 1
    assert samples({"temperature": 0.7}) and samples({"temperature": None}) and samples({"seed": None})
    assert samples({"temperature": False}) and samples({"seed": True}) and samples({"seed": "7"})
    assert not samples({"temperature": 0}) and not samples({"temperature": 0.0})
    assert not samples({"temperature": 0.9, "seed": 42}) and not samples({"seed": 3.0})
    assert not cacheable(chat(), sampled=False)
    assert cacheable(chat(), sampled=True)
    assert cacheable(chat(seed=1), sampled=False)
    assert cacheable(chat(temperature=0), sampled=False)


def test_an_entry_round_trips_and_garbage_is_no_entry() -> None:
    entry = Entry(("tell ", "me "), "3", Usage(3, 2), "length", 1700000000.5)
    assert Entry.decode(entry.encode()) == entry
    uncounted = Entry(("x",), "1", None, "stop", 1.0)
    assert Entry.decode(uncounted.encode()) == uncounted
    good = json.loads(entry.encode())
    for garbage in (
        b"",
        b"\xff\xfe",
        b"[1]",
        b"[" * 100000,
        json.dumps({**good, "pieces": []}).encode(),
        json.dumps({**good, "pieces": [1]}).encode(),
        json.dumps({**good, "usage": [1]}).encode(),
        json.dumps({**good, "usage": [1, -2]}).encode(),
        json.dumps({**good, "stored_at": "yesterday"}).encode(),
        json.dumps({key: value for key, value in good.items() if key != "version"}).encode(),
    ):
        assert Entry.decode(garbage) is None


def test_an_entrys_age_never_goes_below_zero() -> None:
    entry = Entry(("x",), "1", None, "stop", 100.0)
    assert entry.age(102.5) == 2.5 and entry.age(99.0) == 0.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_pod_store_drops_the_least_recently_used_beyond_its_bytes() -> None:
    async def scenario() -> None:
        store = PodStore(max_bytes=10)
        await store.put("a", b"aaaa", 60)
        await store.put("b", b"bbbb", 60)
        assert await store.get("a") == b"aaaa"  # a is now the most recently used
        await store.put("c", b"cccc", 60)  # 12 bytes: b goes
        assert await store.get("b") is None
        assert (await store.get("a"), await store.get("c")) == (b"aaaa", b"cccc")
        assert store.size == 8
        await store.put("a", b"a", 60)  # replacing counts the new size only
        assert store.size == 5
        await store.put("huge", b"h" * 11, 60)  # larger than the whole bound: not kept, nothing dropped
        assert await store.get("huge") is None and store.size == 5

    asyncio.run(scenario())


def test_the_pod_store_forgets_an_entry_past_its_ttl() -> None:
    async def scenario() -> None:
        clock = Clock()
        store = PodStore(max_bytes=100, clock=clock)
        await store.put("a", b"aaaa", 2)
        clock.now += 1.9
        assert await store.get("a") == b"aaaa"
        clock.now += 0.1
        assert await store.get("a") is None and store.size == 0

    asyncio.run(scenario())


class FailingStore:
    """A store that fails as a Redis that is down, slow or garbled would."""

    def __init__(self, failure: str) -> None:
        self.failure = failure

    async def get(self, key: str) -> bytes | None:
        return await self._fail()

    async def put(self, key: str, value: bytes, ttl_seconds: int) -> None:
        await self._fail()

    async def _fail(self) -> bytes:
        if self.failure == "down":
            raise ConnectionRefusedError("refused")
        if self.failure == "slow":
            await asyncio.sleep(10)
        return b"\x00not an entry"

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("failure", ["down", "slow", "garbage"])
def test_a_failing_store_makes_a_miss_never_an_error(failure: str) -> None:
    async def scenario() -> tuple[Lookup, float]:
        cache = ResponseCache(CacheSettings("redis://x:1"), FailingStore(failure))
        loop = asyncio.get_running_loop()
        started = loop.time()
        lookup = await cache.look_up("assistant", "1", chat(**GREEDY))
        await cache.keep(lookup, ["x"], "1", None, "stop")
        return lookup, loop.time() - started

    lookup, took = asyncio.run(scenario())
    assert lookup.state == "miss" and lookup.entry is None and lookup.key is not None
    assert took < 1  # a slow store is given up on (a quarter of a second an operation)


def test_a_hit_an_expired_entry_and_a_skip() -> None:
    async def scenario() -> list[Lookup]:
        clock = Clock()
        store = PodStore(1000)
        cache = ResponseCache(CacheSettings("pod", ttl_seconds=10), store, clock=clock)
        missed = await cache.look_up("assistant", "1", chat(**GREEDY))
        await cache.keep(missed, ["tell ", "me "], "1", Usage(3, 2), "length")
        clock.now += 4.6
        hit = await cache.look_up("assistant", "1", chat(**GREEDY))
        clock.now += 6
        expired = await cache.look_up("assistant", "1", chat(**GREEDY))  # still in the store, too old
        skipped = await cache.look_up("assistant", "1", chat())
        return [missed, hit, expired, skipped]

    missed, hit, expired, skipped = asyncio.run(scenario())
    assert missed.state == "miss" and missed.headers() == {"x-tollway-cache": "miss"}
    assert hit.entry == Entry(("tell ", "me "), "1", Usage(3, 2), "length", 1000.0)
    assert hit.headers() == {"x-tollway-cache": "hit", "age": "4"}
    assert expired.state == "miss"
    assert skipped.state == "skip" and skipped.key is None


def test_only_a_miss_is_stored() -> None:
    async def scenario() -> PodStore:
        store = PodStore(1000)
        cache = ResponseCache(CacheSettings("pod"), store)
        for lookup in (Lookup("skip"), Lookup("off"), Lookup(None)):
            await cache.keep(lookup, ["x"], "1", None, "stop")
        return store

    assert asyncio.run(scenario()).entries == {}


def test_usage_says_how_much_of_the_prompt_came_from_the_cache() -> None:
    usage = Usage(3, 2)
    assert Lookup("hit").usage(usage) == Usage(3, 2, cached_tokens=3)
    assert Lookup("miss").usage(usage) == Usage(3, 2, cached_tokens=0)
    assert Lookup("skip").usage(usage) == Lookup("off").usage(usage) == Lookup(None).usage(usage) == usage
    assert Lookup("hit").usage(None) is None
    assert Usage(3, 2, cached_tokens=3).as_object() == {
        "prompt_tokens": 3,
        "completion_tokens": 2,
        "total_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": 3},
    }
    assert "prompt_tokens_details" not in usage.as_object()
    assert Lookup(None).headers() == {}


def test_warnings_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    warnings = Warnings(60, clock=clock)
    with caplog.at_level(logging.WARNING, logger="tollway.openai"):
        for _ in range(5):
            warnings.warn("the store is down")
        clock.now += 60
        warnings.warn("the store is down")
    assert [record.getMessage() for record in caplog.records] == [
        "the store is down",
        "the store is down (4 cache warnings held back since the last)",
    ]


def test_the_cache_flags() -> None:
    def parsed(*flags: str) -> Any:
        return cli.parser().parse_args(["openai-server", "--model=m", "--kind=chat", *flags])

    defaults = parsed()
    assert defaults.cache_store is None
    assert (defaults.cache_bytes, defaults.cache_ttl_seconds) == (268435456, 3600)
    assert (defaults.cache_sampled, defaults.cache_revision) == (False, "")
    assert parsed("--cache-store=pod").cache_store == "pod"
    assert parsed("--cache-store", "redis://cache.llm:6379").cache_store == "redis://cache.llm:6379"
    for wrong in (
        "--cache-store=memory",
        "--cache-store=redis://cache",
        "--cache-store=redis://:pw@cache:6379",
        "--cache-store=http://cache:6379",
        "--cache-ttl-seconds=0",
    ):
        with pytest.raises(SystemExit):
            parsed(wrong)
