"""The OpenAI server's response cache on real components: the real Triton serving the stand-in streaming
LLM (tests/models/streamer, a token every 20 ms), a real redis-server asking for a password, shared by two
`tollway openai-server` processes of the same model (and a third with a 2-second ttl and another revision),
two more each with a cache of its own (`--cache-store pod`, the second caching requests that sample too),
and the official `openai` SDK as the client. Whether the model ran is read from Triton's own statistics."""

from __future__ import annotations

import json
import secrets
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import redis as redis_client
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletionChunk

from tollway.ir.names import CACHE_PASSWORD_VARIABLE

from testbed.dataplane import redis
from testbed.kube import eventually
from testbed.processes import Process, free_port
from testbed.triton import RunningTriton, contents, executions, language_model, running, start_openai_server

MODEL = "assistant"
GREEDY = {"temperature": 0}


@dataclass
class Bed:
    triton: RunningTriton
    workdir: Path
    redis: Process
    redis_port: int
    redis_password: str
    shared: tuple[str, str]
    """Two replicas' base URLs, sharing the Redis (revision r1, the default ttl)."""
    short: str
    """Shares the Redis, with a 2-second ttl and revision r2."""
    own: str
    """A cache in its own memory (revision r1)."""
    own_sampled: str
    """A cache in its own memory (revision r1) that keeps requests that sample too."""
    logs: dict[str, Path]

    def store(self) -> redis_client.Redis:
        return redis_client.Redis(port=self.redis_port, password=self.redis_password)


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    workdir = tmp_path_factory.mktemp("openai-cache")
    chat = language_model(MODEL, "chat")
    port, password = free_port(), secrets.token_hex(16)
    in_redis = [f"--cache-store=redis://127.0.0.1:{port}"]
    env = {CACHE_PASSWORD_VARIABLE: password}
    with running(workdir, chat) as triton:
        servers: list[tuple[Process, str]] = []
        bed = None
        store = redis(workdir, port, password)
        try:
            for flags in (
                [*in_redis, "--cache-revision=r1"],
                [*in_redis, "--cache-revision=r1"],
                [*in_redis, "--cache-revision=r2", "--cache-ttl-seconds=2"],
                ["--cache-store=pod", "--cache-revision=r1"],
                ["--cache-store=pod", "--cache-revision=r1", "--cache-sampled"],
            ):
                servers.append(start_openai_server(workdir, chat, triton, flags=flags, env=env))
            urls = [url for _, url in servers]
            bed = Bed(
                triton, workdir, store, port, password, (urls[0], urls[1]), urls[2], urls[3], urls[4],
                logs={url: process.log for process, url in servers},
            )  # fmt: skip
            yield bed
        finally:
            for process, _ in servers:
                process.stop()
            (store if bed is None else bed.redis).stop()  # a test restarts it


@dataclass
class Reply:
    """What the cache header said and what the answer was."""

    cache: str | None
    age: str | None
    text: str
    model: str
    finish_reason: str | None
    usage: CompletionUsage | None


def ask(url: str, prompt: str, headers: dict[str, str] | None = None, **request: Any) -> Reply:
    """A chat request, not streamed (at most 4 tokens unless asked)."""
    raw = client(url).chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": prompt}],
        **{"max_tokens": 4, **request},
        extra_headers=headers or {},
    )
    answer = raw.parse()
    choice = answer.choices[0]
    return Reply(
        raw.headers.get("x-tollway-cache"),
        raw.headers.get("age"),
        choice.message.content or "",
        answer.model,
        choice.finish_reason,
        answer.usage,
    )


def ask_streamed(url: str, prompt: str, **request: Any) -> tuple[Reply, list[ChatCompletionChunk]]:
    """A chat request streamed with its usage chunk; its reply (the usage chunk's usage) and chunks."""
    raw = client(url).chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": prompt}],
        **{"max_tokens": 4, **request},
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(raw.parse())
    reasons = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices]
    reply = Reply(
        raw.headers.get("x-tollway-cache"),
        raw.headers.get("age"),
        "".join(contents(chunks)),
        chunks[0].model,
        reasons[-1],
        chunks[-1].usage,
    )
    return reply, chunks


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="unused-here", max_retries=0)


def ran(bed: Bed) -> int:
    return executions(bed.triton, MODEL)


def test_a_repeated_request_is_answered_from_the_cache_without_the_model(bed: Bed) -> None:
    before = ran(bed)
    first = ask(bed.shared[0], "a question asked twice", **GREEDY)
    assert (first.cache, first.text, first.model) == ("miss", "a question asked twice ", "assistant@1")
    assert ran(bed) == before + 1
    assert first.usage is not None and first.usage.prompt_tokens_details is not None
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    again = ask(bed.shared[0], "a question asked twice", **GREEDY)
    assert ran(bed) == before + 1  # the model did not run
    assert (again.cache, again.text, again.model, again.finish_reason) == (
        "hit",
        first.text,
        "assistant@1",
        "length",
    )
    assert again.age is not None and 0 <= int(again.age) <= 5
    assert again.usage is not None and again.usage.prompt_tokens_details is not None
    assert (again.usage.prompt_tokens, again.usage.completion_tokens) == (4, 4)
    assert again.usage.prompt_tokens_details.cached_tokens == 4  # all of the prompt came from the cache


def test_a_miss_on_one_replica_is_a_hit_on_the_other(bed: Bed) -> None:
    assert ask(bed.shared[0], "shared between replicas", seed=11).cache == "miss"
    before = ran(bed)
    other = ask(bed.shared[1], "shared between replicas", seed=11)
    assert (other.cache, other.text) == ("hit", "shared between replicas shared ")
    assert ran(bed) == before


def test_a_request_differing_in_one_parameter_is_run(bed: Bed) -> None:
    assert ask(bed.shared[0], "one parameter apart", **GREEDY).cache == "miss"
    before = ran(bed)
    assert ask(bed.shared[1], "one parameter apart", **GREEDY, top_p=0.5).cache == "miss"
    assert ask(bed.shared[1], "one parameter apart", **GREEDY, max_tokens=3).cache == "miss"
    assert ran(bed) == before + 2
    # the same request again, 0 written 0.0
    assert ask(bed.shared[1], "one parameter apart", top_p=0.5, temperature=0.0).cache == "hit"


def test_the_cache_is_a_redis_of_prefixed_keys_that_expire(bed: Bed) -> None:
    before = set(bed.store().keys("tollway:cache:*"))
    ask(bed.shared[0], "where the entries live", **GREEDY)
    (added,) = set(bed.store().keys("tollway:cache:*")) - before
    assert 3590 <= int(bed.store().ttl(added)) <= 3600  # SET key value EX ttl


def test_a_streamed_hit_streams_the_pieces_with_their_usage(bed: Bed) -> None:
    missed, missed_chunks = ask_streamed(bed.shared[0], "streamed then replayed", **GREEDY)
    assert missed.cache == "miss" and missed.usage is not None
    assert missed.usage.prompt_tokens_details is not None
    assert missed.usage.prompt_tokens_details.cached_tokens == 0
    before = ran(bed)
    hit, chunks = ask_streamed(bed.shared[1], "streamed then replayed", **GREEDY)
    assert ran(bed) == before
    assert hit.cache == "hit" and hit.age is not None
    assert contents(chunks) == contents(missed_chunks) == ["streamed ", "then ", "replayed ", "streamed "]
    assert chunks[0].choices[0].delta.role == "assistant" and hit.finish_reason == "length"
    assert hit.model == "assistant@1" and chunks[-1].choices == []  # the usage chunk
    assert hit.usage is not None and hit.usage.prompt_tokens_details is not None
    assert (hit.usage.prompt_tokens, hit.usage.completion_tokens) == (3, 4)
    assert hit.usage.prompt_tokens_details.cached_tokens == 3
    assert chunks[0].id != missed_chunks[0].id
    # the usage comments the gateway meters streams by are a miss's (see test_openai_server.py)
    assert usage_comments(bed.shared[1], "streamed then replayed") == [
        ": usage 0 1",
        ": usage 0 2",
        ": usage 0 3",
        ": usage 0 4",
        ": usage 3 4",
    ]


def usage_comments(url: str, prompt: str) -> list[str]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 4, **GREEDY}
    request = urllib.request.Request(
        f"{url}/chat/completions",
        data=json.dumps({**body, "stream": True}).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers["x-tollway-cache"] == "hit"
        blocks = response.read().decode().split("\n\n")
    return [block for block in blocks if block.startswith(": usage ")]


def test_a_whole_answer_hits_what_a_stream_stored(bed: Bed) -> None:
    streamed, _ = ask_streamed(bed.shared[0], "stream first", **GREEDY)
    before = ran(bed)
    whole = ask(bed.shared[1], "stream first", **GREEDY)
    assert ran(bed) == before
    assert (whole.cache, whole.text, whole.finish_reason) == ("hit", streamed.text, "length")
    assert whole.text == "stream first stream first "


def test_an_entry_past_its_ttl_is_not_served(bed: Bed) -> None:
    first = ask(bed.short, "short lived", **GREEDY)
    answered = time.monotonic()  # the entry was stored before the answer was sent
    assert first.cache == "miss"
    assert ask(bed.short, "short lived", **GREEDY).cache == "hit"
    time.sleep(max(0.0, answered + 2.5 - time.monotonic()))
    before = ran(bed)
    assert ask(bed.short, "short lived", **GREEDY).cache == "miss"
    assert ran(bed) == before + 1


def test_another_version_or_revision_misses(bed: Bed) -> None:
    pinned = {"x-tollway-model-version": "1"}
    assert ask(bed.shared[0], "which version", pinned, **GREEDY).cache == "miss"
    assert ask(bed.shared[0], "which version", **GREEDY).cache == "miss"  # no version resolved
    assert ask(bed.shared[1], "which version", pinned, **GREEDY).cache == "hit"
    assert ask(bed.short, "which version", pinned, **GREEDY).cache == "miss"  # its revision is r2


def test_a_tier_that_opted_out_neither_reads_nor_writes(bed: Bed) -> None:
    off = {"x-tollway-cache": "off"}
    before = ran(bed)
    assert ask(bed.shared[0], "opted out", off, **GREEDY).cache == "off"
    assert ask(bed.shared[0], "opted out", **GREEDY).cache == "miss"  # the answer above was not stored
    opted_out = ask(bed.shared[0], "opted out", off, **GREEDY)  # this one is, but is not read
    assert opted_out.cache == "off" and opted_out.usage is not None
    assert opted_out.usage.prompt_tokens_details is None
    assert ran(bed) == before + 3
    assert ask(bed.shared[0], "opted out", **GREEDY).cache == "hit"


def probe(url: str, prompt: str, headers: dict[str, str] | None = None, **request: Any) -> tuple[int, str]:
    """The gateway's question before it reserves a request's tokens: is its answer held? (status, what the
    cache header says)."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 4, **request}
    asked = urllib.request.Request(
        f"{url}/chat/completions",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", "x-tollway-cache-probe": "1", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(asked, timeout=10) as answer:
            return answer.status, answer.headers["x-tollway-cache"]
    except urllib.error.HTTPError as refused:
        return refused.code, refused.headers["x-tollway-cache"]


def test_a_probe_says_whether_an_answer_is_held_without_running_the_model(bed: Bed) -> None:
    before = ran(bed)
    assert probe(bed.shared[0], "probed", **GREEDY) == (404, "miss")
    assert ask(bed.shared[0], "probed", **GREEDY).cache == "miss"  # the probe stored nothing
    assert probe(bed.shared[1], "probed", **GREEDY) == (204, "hit")  # held for every replica
    assert probe(bed.shared[1], "probed", **GREEDY, max_tokens=3) == (404, "miss")
    assert probe(bed.shared[1], "probed") == (404, "skip")  # it samples
    assert probe(bed.shared[1], "probed", {"x-tollway-cache": "off"}, **GREEDY) == (404, "off")
    assert ran(bed) == before + 1  # only the one request ran the model
    # An answer about to expire is not promised: the request after the probe could miss (ttl 2 s here).
    ask(bed.short, "probed", **GREEDY)
    assert ask(bed.short, "probed", **GREEDY).cache == "hit"
    assert probe(bed.short, "probed", **GREEDY) == (404, "hit")


def test_a_request_that_samples_is_skipped_and_run_each_time(bed: Bed) -> None:
    before = ran(bed)
    for _ in range(2):
        assert ask(bed.shared[0], "a sampled answer").cache == "skip"
        assert ask(bed.shared[0], "a sampled answer", temperature=0.7).cache == "skip"
    assert ran(bed) == before + 4
    # unless the server caches requests that sample too
    assert ask(bed.own_sampled, "a sampled answer").cache == "miss"
    assert ask(bed.own_sampled, "a sampled answer").cache == "hit"


def test_a_pod_store_is_its_servers_own(bed: Bed) -> None:
    assert ask(bed.own, "kept in the pod", **GREEDY).cache == "miss"
    before = ran(bed)
    assert ask(bed.own, "kept in the pod", **GREEDY).cache == "hit"
    assert ran(bed) == before
    assert ask(bed.own_sampled, "kept in the pod", **GREEDY).cache == "miss"  # same revision, own memory
    assert ran(bed) == before + 1


def test_an_entry_that_does_not_parse_is_a_miss(bed: Bed) -> None:
    before = set(bed.store().keys("tollway:cache:*"))
    ask(bed.shared[1], "garbled in the store", **GREEDY)
    (added,) = set(bed.store().keys("tollway:cache:*")) - before
    bed.store().set(added, b"\x00 not an entry", keepttl=True)
    garbled = ask(bed.shared[1], "garbled in the store", **GREEDY)
    assert (garbled.cache, garbled.text) == ("miss", "garbled in the store ")
    assert ask(bed.shared[1], "garbled in the store", **GREEDY).cache == "hit"  # stored again


def test_a_slow_or_stopped_redis_makes_misses_not_errors(bed: Bed) -> None:
    log = bed.logs[bed.shared[0]]
    warned = cache_warnings(log)
    bed.redis.popen.send_signal(signal.SIGSTOP)  # slow: it takes connections and answers nothing
    try:
        started = time.monotonic()
        slow = ask(bed.shared[0], "while redis is slow", **GREEDY)
        assert time.monotonic() - started < 5  # the model's 80 ms and two quarter-second timeouts
        assert (slow.cache, slow.text) == ("miss", "while redis is slow ")
    finally:
        bed.redis.popen.send_signal(signal.SIGCONT)
    bed.redis.stop()
    try:
        before = ran(bed)
        for _ in range(3):
            down = ask(bed.shared[0], "while redis is down", **GREEDY)
            assert (down.cache, down.text) == ("miss", "while redis is down ")
        assert ran(bed) == before + 3
        assert len(cache_warnings(log)) == len(warned) + 1  # not one a request
    finally:
        bed.redis = redis(bed.workdir, bed.redis_port, bed.redis_password)
    # back: the cache works again
    eventually(lambda: ask(bed.shared[0], "after redis is back", **GREEDY).cache == "hit", timeout=20)


def cache_warnings(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if "response cache" in line]
