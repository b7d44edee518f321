"""Answer caching through the gateway, on real components: Triton (PyTriton's server) with the decoupled
stand-in LLM (tests/models/streamer), two `tollway openai-server`s for the model (two replicas, as its pods
run them) sharing one Redis as their answer cache (spec.cache.store: shared), the gateway's Redis and
ratelimit service, and two Envoy replicas balancing over both servers; the official `openai` SDK as the
client. Model executions are Triton's own statistics; metering is Envoy's own counters."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest

from tollway.ir.names import CACHE_PASSWORD_VARIABLE

from testbed import dataplane
from testbed.dataplane import fresh_window, summed
from testbed.gateway import secret, tier
from testbed.kube import eventually
from testbed.processes import free_port
from testbed.triton import (
    RunningTriton,
    executions,
    language_model,
    language_model_document,
    running,
    start_openai_server,
)

NAMESPACE = "gw"
KEYS = {
    "pro": "k-pro-0123456789",
    "private": "k-private-0123456789",
    "lean": "k-lean-0123456789",
    "thrifty": "k-thrifty-0123456789",
}
SMALL_TPM = 50
"""lean's and thrifty's tokens per minute: one of this file's requests (a ~110-byte body: 28 tokens, and 5 to
answer) fits, a second does not."""
CACHE = {"enabled": True, "store": "shared", "ttlSeconds": 600}
ASKED = [{"role": "user", "content": "what is a cache for"}]


def documents() -> list[dict[str, Any]]:
    limits = {"requestsPerMinute": 10_000, "tokensPerMinute": 1_000_000}
    small = {"requestsPerMinute": 10_000, "tokensPerMinute": SMALL_TPM}
    tiers = [
        tier("pro", 2, limits, ["assistant"], pricing={"cachedPer1kTokens": "0.0001"}),
        # a tier whose data must never be shared through a cache
        tier("private", 2, limits, ["assistant"], cache={"enabled": False}),
        # two tiers with few tokens: lean's hits count against them (the default), thrifty's do not
        tier("lean", 2, small, ["assistant"]),
        tier("thrifty", 2, small, ["assistant"], cache={"hitsCountAgainstLimits": False}),
    ]
    secrets_ = [secret(f"{name}-key", name, key) for name, key in KEYS.items()]
    return [language_model_document("assistant", "chat", NAMESPACE, cache=CACHE), *tiers, *secrets_]


@dataclass
class Bed:
    gateway: dataplane.GatewayProcesses
    triton: RunningTriton

    def client(self, tier_name: str, replica: int) -> openai.OpenAI:
        url = f"http://127.0.0.1:{self.gateway.ports[replica]}/v1"
        return openai.OpenAI(base_url=url, api_key=KEYS[tier_name], max_retries=0)

    def executions(self) -> int:
        return executions(self.triton, "assistant")

    def counted(self, counter: str, **labels: str) -> float:
        return summed(self.gateway.stats(), counter, **labels)


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    workdir = tmp_path_factory.mktemp("gateway-cache")
    chat = language_model("assistant", "chat", cache=CACHE)
    cache_port, password = free_port(), secrets.token_hex(16)
    (workdir / "cache").mkdir()
    cache = dataplane.redis(workdir / "cache", cache_port, password)
    try:
        with running(workdir / "triton", chat) as triton:
            flags, env = (
                [f"--cache-store=redis://127.0.0.1:{cache_port}"],
                {CACHE_PASSWORD_VARIABLE: password},
            )
            servers = [start_openai_server(workdir, chat, triton, flags=flags, env=env) for _ in range(2)]
            # the model's two replicas behind the gateway: one upstream endpoint each
            endpoints = ",".join(triton.upstream("assistant", url).split("=")[1] for _, url in servers)
            gateway = dataplane.GatewayProcesses(
                workdir=workdir,
                replicas=[dataplane.EnvoyPorts.free() for _ in range(2)],
                upstreams=[f"assistant={endpoints}"],
            )
            source = workdir / "manifests.yaml"
            source.write_text("\n---\n".join(json.dumps(document) for document in documents()))
            try:
                gateway.write_config(source)
                gateway.start_redis()
                gateway.start_ratelimit()
                gateway.start_envoys()
                yield Bed(gateway, triton)
            finally:
                gateway.stop()
                for process, _ in servers:
                    process.stop()
    finally:
        cache.stop()


def ask(client: openai.OpenAI, content: str, **options: Any) -> Any:
    """A deterministic chat request (temperature 0 unless `options` say otherwise), with its raw response."""
    asked = [{"role": "user", "content": content}]
    return client.chat.completions.with_raw_response.create(
        model="assistant", messages=asked, **{"max_tokens": 5, "temperature": 0, **options}
    )


def test_a_repeated_question_is_answered_from_the_shared_cache_through_either_replica(bed: Bed) -> None:
    before = bed.executions()
    first = ask(bed.client("pro", 0), "what is a cache for")
    assert first.headers["x-tollway-cache"] == "miss"
    made = first.parse()
    assert bed.executions() == before + 1
    # Through the other Envoy, which balances over both of the model's servers: every repeat is a hit.
    for _ in range(4):
        again = ask(bed.client("pro", 1), "what is a cache for")
        assert again.headers["x-tollway-cache"] == "hit" and int(again.headers["age"]) >= 0
        answer = again.parse()
        assert answer.choices[0].message.content == made.choices[0].message.content
        assert answer.model == made.model == "assistant@1"
        assert answer.usage is not None and made.usage is not None
        assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (
            made.usage.prompt_tokens,
            made.usage.completion_tokens,
        )
        details = answer.usage.prompt_tokens_details
        assert details is not None and details.cached_tokens == answer.usage.prompt_tokens
    assert bed.executions() == before + 1  # the model ran once


def test_a_streamed_repeat_is_streamed_back_from_the_cache(bed: Bed) -> None:
    def streamed() -> tuple[str, list[str], Any]:
        stream = bed.client("pro", 0).chat.completions.create(
            model="assistant",
            messages=[{"role": "user", "content": "stream it twice"}],
            max_tokens=6,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        pieces = [chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices]
        return stream.response.headers["x-tollway-cache"], pieces, chunks[-1].usage

    before = bed.executions()
    said, pieces, usage = streamed()
    assert said == "miss" and bed.executions() == before + 1
    said_again, pieces_again, usage_again = streamed()
    assert said_again == "hit" and bed.executions() == before + 1
    assert pieces_again == pieces and len([piece for piece in pieces if piece]) > 1  # a chunk a piece
    assert (usage_again.prompt_tokens, usage_again.completion_tokens) == (usage.prompt_tokens, 6)


def test_one_parameter_changed_runs_the_model_again(bed: Bed) -> None:
    client = bed.client("pro", 0)
    ask(client, "one parameter")
    before = bed.executions()
    assert ask(client, "one parameter", max_tokens=6).headers["x-tollway-cache"] == "miss"
    assert ask(client, "one parameter", stop=["x"]).headers["x-tollway-cache"] == "miss"
    assert ask(client, "one parameter").headers["x-tollway-cache"] == "hit"
    assert bed.executions() == before + 2


def test_a_request_that_samples_is_never_served_from_the_cache(bed: Bed) -> None:
    before = bed.executions()
    for _ in range(2):
        sampled = ask(bed.client("pro", 0), "sample me", temperature=0.7)
        assert sampled.headers["x-tollway-cache"] == "skip"
    assert bed.executions() == before + 2


def test_hits_are_metered_as_cached_tokens_and_counted_per_model_and_tier(bed: Bed) -> None:
    pro = {"tier": "pro", "consumer": "pro-key"}
    labels = {"model": "assistant", "version": "1", "tier": "pro"}
    before = {
        kind: bed.counted(f"envoy_tollway_usage_{kind}", **pro)
        for kind in ("input", "cached_input", "cached_output")
    }
    hits = bed.counted("envoy_tollway_cache_answers", cache="hit", **labels)
    ask(bed.client("pro", 0), "meter me")
    answer = ask(bed.client("pro", 1), "meter me").parse()
    prompt, completion = answer.usage.prompt_tokens, answer.usage.completion_tokens

    def metered() -> bool:
        return (
            bed.counted("envoy_tollway_usage_input", **pro) == before["input"] + 2 * prompt
            and bed.counted("envoy_tollway_usage_cached_input", **pro) == before["cached_input"] + prompt
            and bed.counted("envoy_tollway_usage_cached_output", **pro)
            == before["cached_output"] + completion
            and bed.counted("envoy_tollway_model_cached_output_tokens", **labels) >= completion
            and bed.counted("envoy_tollway_cache_answers", cache="hit", **labels) == hits + 1
        )

    eventually(metered)


def test_a_tier_that_opted_out_neither_reads_nor_fills_the_cache(bed: Bed) -> None:
    before = bed.executions()
    for _ in range(2):
        private = ask(bed.client("private", 0), "keep this private")
        assert private.headers["x-tollway-cache"] == "off"
    assert bed.executions() == before + 2
    # nothing of the private tier's was kept: the same question from pro is a miss
    assert ask(bed.client("pro", 0), "keep this private").headers["x-tollway-cache"] == "miss"
    # and pro's answer, now kept, is still never served to the private tier
    assert ask(bed.client("private", 1), "keep this private").headers["x-tollway-cache"] == "off"
    assert bed.executions() == before + 4


def test_a_client_cannot_say_what_the_cache_does_with_its_request(bed: Bed) -> None:
    """x-tollway-cache from a client never reaches the model's server: only the gateway sets it."""
    pro = bed.client("pro", 0)
    ask(pro, "forged header")
    forged = ask(pro, "forged header", extra_headers={"x-tollway-cache": "off"})
    assert forged.headers["x-tollway-cache"] == "hit"
    private = ask(bed.client("private", 0), "forged header", extra_headers={"x-tollway-cache": "on"})
    assert private.headers["x-tollway-cache"] == "off"


def test_a_tier_whose_hits_are_free_is_served_them_once_its_tokens_are_spent(bed: Bed) -> None:
    """The gateway asks the model's shared cache before reserving; a held answer takes none of thrifty's
    tokens. lean's hits reserve like any request. Both are metered the same."""
    fresh_window(40)  # one window of the ratelimit service's for the whole test
    kept = "an answer every tier may reuse"
    assert ask(bed.client("pro", 0), kept).headers["x-tollway-cache"] == "miss"
    before = bed.executions()
    thrifty = {"tier": "thrifty", "consumer": "thrifty-key"}
    used_before = bed.counted("envoy_tollway_usage_cached_input", **thrifty)
    for name in ("lean", "thrifty"):
        client = bed.client(name, 0)
        assert ask(client, f"{name} spends its tokens").headers["x-tollway-cache"] == "miss"
        with pytest.raises(openai.RateLimitError):  # its minute's tokens are spent now
            ask(client, f"{name} asks something new")
    with pytest.raises(openai.RateLimitError):
        ask(bed.client("lean", 1), kept)  # a hit, but lean's hits count
    for replica in (0, 1, 0):
        served = ask(bed.client("thrifty", replica), kept)
        assert served.headers["x-tollway-cache"] == "hit"
        assert "x-ratelimit-remaining-tokens" not in served.headers  # no token limit was asked
    with pytest.raises(openai.RateLimitError):  # what is not cached is still limited
        ask(bed.client("thrifty", 1), "thrifty asks something new")
    assert bed.executions() == before + 2  # the two spending requests; no hit ran the model
    prompt = served.parse().usage.prompt_tokens
    # the free hits are still metered, as cached tokens
    eventually(lambda: bed.counted("envoy_tollway_usage_cached_input", **thrifty) == used_before + 3 * prompt)
