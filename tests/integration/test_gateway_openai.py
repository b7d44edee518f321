"""The OpenAI API through the gateway, on real components: Triton (PyTriton's server) serving a decoupled
streaming chat model (tests/models/streamer: a token every 20 ms), a completion model and an embedding
model, each with its `tollway openai-server`; Redis, the ratelimit service and two Envoy replicas configured
by `tollway gateway-config`; the official `openai` SDK as the client (sync and async, streamed and not),
curl -N for the raw Server-Sent Events, and raw sockets for a client that leaves mid-stream. The gateway
ships its quality samples and feedback to a real OpenTelemetry Collector (testbed.otel), whose file the
tests read."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient

from testbed import client, dataplane
from testbed.dataplane import fresh_window, summed
from testbed.gateway import secret, tier
from testbed.kube import eventually
from testbed.otel import Collector, LogRecord
from testbed.triton import (
    RunningTriton,
    contents,
    held_chat_stream,
    holding,
    language_model,
    language_model_document,
    running,
    start_openai_server,
)

NAMESPACE = "gw"
KEYS = {
    "pro": "k-pro-0123456789",
    "free": "k-free-0123456789",
    "single": "k-single-0123456789",
    "metered": "k-metered-0123456789",
}
CHAT_VERSIONS = {
    "versions": [
        {"version": "3"},
        {"version": "2", "deprecation": {"announced": "2026-01-01", "sunset": "2099-01-01"}},
        {"version": "1", "deprecation": {"announced": "2025-01-01", "sunset": "2026-02-01"}},
    ],
    "aliases": {"stable": "2"},
}
ASKED = [{"role": "user", "content": "tell me more"}]
SECRET_PATTERN = r"sk-[A-Za-z0-9]{8,}"
MASK = "[REDACTED]"
METERED_TPM = 400


def documents() -> list[dict[str, Any]]:
    models = [
        language_model_document("assistant", "chat", NAMESPACE, **CHAT_VERSIONS),
        language_model_document("writer", "completion", NAMESPACE),
        language_model_document("embedder", "embedding", NAMESPACE),
    ]
    # pro's requests are all sampled, with a pattern of its own masked; the others' never (the models' rate)
    sampling = {"sampleRate": "1", "redact": {"patterns": [SECRET_PATTERN]}}
    tiers = [
        tier("pro", 2, {"requestsPerMinute": 10_000, "tokensPerMinute": 1_000_000}, ["*"], sampling=sampling),
        tier("free", 5, {"requestsPerMinute": 10_000}, ["assistant"]),
        tier("single", 3, {"concurrentRequests": 1}, ["writer"]),
        tier("metered", 3, {"tokensPerMinute": METERED_TPM}, ["writer"]),
    ]
    secrets = [secret(f"{name}-key", name, key) for name, key in KEYS.items()]
    return [*models, *tiers, *secrets]


@dataclass
class Bed:
    gateway: dataplane.GatewayProcesses
    triton: RunningTriton
    models: Path
    samples: Collector

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.ports[0]}/v1"

    def client(self, tier_name: str = "pro", retries: int = 0) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key=KEYS[tier_name], max_retries=retries)

    def usage(self, kind: str, tier_name: str) -> float:
        """A usage counter of a tier's consumer, summed over the replicas."""
        consumer = f"{tier_name}-key"
        return summed(self.gateway.stats(), f"envoy_tollway_usage_{kind}", tier=tier_name, consumer=consumer)


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    workdir = tmp_path_factory.mktemp("gateway-openai")
    chat = language_model("assistant", "chat", **CHAT_VERSIONS)
    completion, embedding = language_model("writer", "completion"), language_model("embedder", "embedding")
    with running(workdir / "triton", chat, completion, embedding) as triton:
        servers = {
            serving.model.name: start_openai_server(workdir, serving, triton)
            for serving in (chat, completion, embedding)
        }
        gateway = dataplane.GatewayProcesses(
            workdir=workdir,
            replicas=[dataplane.EnvoyPorts.free() for _ in range(2)],
            upstreams=[triton.upstream(name, url) for name, (_, url) in servers.items()],
        )
        source = workdir / "manifests.yaml"
        source.write_text("\n---\n".join(json.dumps(document) for document in documents()))
        samples = Collector(workdir)
        try:
            samples.start()
            gateway.write_config(source, f"--sample-sink={samples.grpc_address}")
            gateway.start_redis()
            gateway.start_ratelimit()
            gateway.start_envoys()
            yield Bed(gateway, triton, workdir / "triton" / "models", samples)
        finally:
            gateway.stop()
            samples.stop()
            for process, _ in servers.values():
                process.stop()


def test_a_chat_answer_through_the_gateway_names_the_version_that_served_it(bed: Bed) -> None:
    answer = bed.client().chat.completions.create(model="assistant", messages=ASKED, max_tokens=5)
    assert answer.model == "assistant@3"
    assert answer.choices[0].message.content == "tell me more tell me "
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (3, 5)


def test_a_stream_reaches_the_client_token_by_token_as_the_model_makes_it(bed: Bed) -> None:
    stream, chunks = held_chat_stream(
        bed.models,
        "assistant",
        lambda: bed.client().chat.completions.create(
            model="assistant",
            messages=ASKED,
            max_tokens=30,
            stream=True,
            stream_options={"include_usage": True},
        ),
    )
    assert {chunk.model for chunk in chunks} == {"assistant@3"}
    usage = chunks[-1].usage
    assert "".join(contents(chunks)) == " ".join(["tell", "me", "more"] * 10) + " "
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (3, 30)
    # A stream carries the tier's request and token headers too (its reservation already counted).
    headers = stream.response.headers
    assert (headers["x-ratelimit-limit"], headers["x-ratelimit-limit-tokens"]) == ("10000", "1000000")
    assert int(headers["x-ratelimit-remaining"]) < 10_000
    assert int(headers["x-ratelimit-remaining-tokens"]) <= 1_000_000 - 30


def test_without_include_usage_a_stream_carries_no_usage_chunk_but_is_still_metered(bed: Bed) -> None:
    before = (bed.usage("input", "free"), bed.usage("output", "free"))
    stream = bed.client("free").chat.completions.create(
        model="assistant", messages=ASKED, max_tokens=7, stream=True
    )
    chunks = list(stream)
    assert all(chunk.usage is None for chunk in chunks)
    assert (
        "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices).split()
        == (["tell", "me", "more"] * 3)[:7]
    )
    eventually(
        lambda: (bed.usage("input", "free"), bed.usage("output", "free")) == (before[0] + 3, before[1] + 7)
    )


def test_the_raw_event_stream_is_server_sent_events_ending_in_done(bed: Bed) -> None:
    body = json.dumps({"model": "writer", "prompt": "one two", "max_tokens": 4, "stream": True})
    done = subprocess.run(
        ["curl", "-sN", f"{bed.url}/completions", "-H", f"authorization: Bearer {KEYS['pro']}",
         "-H", "content-type: application/json", "-d", body],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    events = [line for line in done.stdout.split("\n") if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    pieces = [json.loads(line[6:]) for line in events[:-1]]
    assert "".join(piece["choices"][0]["text"] for piece in pieces) == "one two one two "
    assert all(piece["model"] == "writer@1" for piece in pieces)


def test_the_model_field_picks_aliases_and_pinned_versions_and_says_when_they_are_deprecated(
    bed: Bed,
) -> None:
    client = bed.client()
    stable = client.chat.completions.with_raw_response.create(model="assistant:stable", messages=ASKED)
    assert stable.parse().model == "assistant@2"
    assert stable.headers["deprecation"] == "@" + str(_epoch("2026-01-01"))
    assert stable.headers["sunset"] == "Thu, 01 Jan 2099 00:00:00 GMT"
    pinned = client.chat.completions.with_raw_response.create(model="assistant@3", messages=ASKED)
    assert pinned.parse().model == "assistant@3" and "deprecation" not in pinned.headers
    with pytest.raises(openai.APIStatusError) as gone:
        client.chat.completions.create(model="assistant@1", messages=ASKED)
    assert gone.value.status_code == 410
    assert gone.value.body == {
        "code": 410,
        "type": "not_found_error",
        "message": "this model version was switched off on 2026-02-01",
    }


def _epoch(day: str) -> int:
    return int(time.mktime(time.strptime(day, "%Y-%m-%d")) - time.timezone)


def test_unknown_and_forbidden_models_are_openai_errors(bed: Bed) -> None:
    with pytest.raises(openai.NotFoundError) as unknown:
        bed.client().chat.completions.create(model="nope", messages=ASKED)
    assert unknown.value.body == {"code": 404, "type": "not_found_error", "message": "no model nope"}
    with pytest.raises(openai.PermissionDeniedError) as forbidden:
        bed.client("free").completions.create(model="writer", prompt="hi")
    assert forbidden.value.body == {
        "code": 403,
        "type": "permission_error",
        "message": "tier free may not use writer version 1",
    }
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=bed.url, api_key="wrong", max_retries=0).models.list()


def test_the_model_list_is_what_the_callers_tier_may_use(bed: Bed) -> None:
    free = {model.id for model in bed.client("free").models.list()}
    assert free == {"assistant", "assistant@3"}  # "assistant" is its latest version only
    pro = {model.id: model for model in bed.client().models.list()}
    assert set(pro) == {
        "assistant",
        "assistant:stable",
        "assistant@3",
        "assistant@2",
        "embedder",
        "embedder@1",
        "writer",
        "writer@1",
    }  # version 1 of assistant is past its sunset
    stable = bed.client().models.retrieve("assistant:stable")
    assert stable.owned_by == NAMESPACE
    assert stable.model_extra is not None
    assert stable.model_extra["tollway"] == {
        "model": "assistant",
        "version": 2,
        "alias": "stable",
        "api": "chat",
        "deprecated": "2026-01-01",
        "sunset": "2099-01-01",
    }
    with pytest.raises(openai.NotFoundError):
        bed.client("free").models.retrieve("writer")


def test_embeddings_through_the_gateway(bed: Bed) -> None:
    answer = bed.client().embeddings.create(model="embedder", input=["one", "two words"])
    assert [item.index for item in answer.data] == [0, 1] and answer.model == "embedder@1"


def test_the_async_client_streams_many_answers_at_once(bed: Bed) -> None:
    async def one(client: openai.AsyncOpenAI, tokens: int) -> str:
        stream = await client.completions.create(model="writer", prompt="a b", max_tokens=tokens, stream=True)
        return "".join([chunk.choices[0].text async for chunk in stream if chunk.choices])

    async def many() -> list[str]:
        async with openai.AsyncOpenAI(base_url=bed.url, api_key=KEYS["pro"], max_retries=0) as client:
            return await asyncio.gather(*(one(client, tokens) for tokens in range(1, 9)))

    answers = asyncio.run(many())
    assert answers == [("a b " * 4)[: 2 * tokens] for tokens in range(1, 9)]


def test_a_caller_who_leaves_mid_stream_is_charged_what_the_model_produced(bed: Bed) -> None:
    before = bed.usage("output", "pro"), bed.usage("requests", "pro")
    body = json.dumps({"model": "writer", "prompt": "on and on", "max_tokens": 300, "stream": True})
    connection = http.client.HTTPConnection("127.0.0.1", bed.gateway.ports[1], timeout=10)
    headers = {"authorization": f"Bearer {KEYS['pro']}", "content-type": "application/json"}
    connection.request("POST", "/v1/completions", body=body, headers=headers)
    response = connection.getresponse()
    read = [response.readline() for _ in range(8)]  # two events: data, blank, usage comment, blank
    assert read[0].startswith(b"data: ")
    connection.sock.close()  # leaves
    connection.close()
    cancelled = bed.models / "writer" / "cancelled"
    produced = int(eventually(lambda: cancelled.exists() and cancelled.read_text(), timeout=20).split()[0])
    charged = eventually(lambda: bed.usage("output", "pro") - before[0], timeout=20)
    assert bed.usage("requests", "pro") == before[1] + 1
    # What had reached the gateway when the client left: at least the two tokens the client read, at most
    # what the model had sent when Triton stopped it (far fewer than the 300 asked for).
    assert 2 <= charged <= produced < 300


def test_the_gateways_time_to_first_token_is_what_the_client_saw(bed: Bed) -> None:
    labels = {"model": "writer", "version": "1", "tier": "pro"}

    def ttft() -> tuple[float, float]:
        """The histogram's count and sum: it is merged into /stats/prometheus every few seconds."""
        text = bed.gateway.stats()
        found = (summed(text, f"envoy_tollway_stream_ttft_ms_{part}", **labels) for part in ("count", "sum"))
        return next(found), next(found)

    time.sleep(6)  # every earlier stream is in the histogram
    count, total = ttft()
    # A client on an open connection, so that its clock starts as it sends (an SDK's own set-up is not the
    # model's time to first token).
    connection = http.client.HTTPConnection("127.0.0.1", bed.gateway.ports[0], timeout=10)
    connection.connect()
    body = json.dumps({"model": "writer", "prompt": "a", "max_tokens": 12, "stream": True})
    headers = {"authorization": f"Bearer {KEYS['pro']}", "content-type": "application/json"}
    started = time.monotonic()
    connection.request("POST", "/v1/completions", body=body, headers=headers)
    response = connection.getresponse()
    while not response.readline().startswith(b"data: "):
        pass
    first = (time.monotonic() - started) * 1000
    response.read()
    connection.close()
    now_count, now_total = eventually(lambda: (found := ttft())[0] > count and found, timeout=20)
    assert now_count == count + 1
    assert abs((now_total - total) - first) < 5


def test_a_429_is_an_openai_error_with_retry_after_and_the_sdk_backs_off_and_succeeds(bed: Bed) -> None:
    """The tier takes one request at a time: a second one while a stream runs is refused (429, Retry-After:
    1); the SDK, with its retries on, waits as told and is served once the first is done."""
    first = bed.client("single").completions.create(model="writer", prompt="x", max_tokens=40, stream=True)
    next(iter(first))  # the first is being served for the next ~800 ms
    with pytest.raises(openai.RateLimitError) as refused:
        bed.client("single").completions.create(model="writer", prompt="y", max_tokens=1)
    assert refused.value.response.headers["retry-after"] == "1"
    assert refused.value.body == {
        "code": 429,
        "type": "rate_limit_error",
        "message": "concurrent request limit of the tier reached",
    }
    started = time.monotonic()
    answer = bed.client("single", retries=3).completions.create(model="writer", prompt="y", max_tokens=1)
    assert answer.choices[0].text == "y " and time.monotonic() - started >= 0.5
    list(first)


def test_streamed_requests_never_overshoot_the_token_limit_under_64_concurrent_clients(bed: Bed) -> None:
    """Each stream reserves its prompt estimate and max_tokens before it runs: of 64 sent at once (across
    both replicas) only as many start as the limit holds, and what they used fits it."""
    fresh_window(40)
    body = json.dumps({"model": "writer", "prompt": "a b c", "max_tokens": 6, "stream": True})
    headers = {"authorization": f"Bearer {KEYS['metered']}", "content-type": "application/json"}

    def one(index: int) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", bed.gateway.ports[index % 2], timeout=60)
        connection.request("POST", "/v1/completions", body=body, headers=headers)
        response = connection.getresponse()
        found = response.status, response.read()
        connection.close()
        return found

    with ThreadPoolExecutor(64) as pool:
        replies = list(pool.map(one, range(64)))
    reservation = -(-len(body) // 4) + 6
    served = [text for status, text in replies if status == 200]
    assert {status for status, _ in replies} == {200, 429}
    assert len(served) == METERED_TPM // reservation  # the limit's worth of reservations, not one more
    assert all(text.endswith(b"data: [DONE]\n\n") for text in served)
    used = eventually(lambda: bed.usage("input", "metered") + bed.usage("output", "metered"))
    assert used == len(served) * (3 + 6) <= METERED_TPM


def test_tritons_generate_and_generate_stream_are_served_limited_and_metered(bed: Bed) -> None:
    """The KServe routes gain Triton's generate extension: a text in, the text out (generate_stream: as
    Server-Sent Events, passed on as they come), metered from the model's own counts."""
    headers = {"authorization": f"Bearer {KEYS['pro']}", "content-type": "application/json"}
    before = bed.usage("output", "pro")
    connection = http.client.HTTPConnection("127.0.0.1", bed.gateway.ports[0], timeout=30)
    body = json.dumps({"text_input": "one two", "max_tokens": 3})
    connection.request("POST", "/v2/models/writer/generate", body=body, headers=headers)
    answer = connection.getresponse()
    assert answer.status == 200 and json.loads(answer.read())["text_output"] == "one two one "
    body = json.dumps({"text_input": "one two", "max_tokens": 20, "stream": True})
    pieces = []
    with holding(bed.models, "writer") as release:
        connection.request("POST", "/v1/models/writer/generate_stream", body=body, headers=headers)
        streamed = connection.getresponse()
        assert streamed.status == 200 and streamed.headers["content-type"].startswith("text/event-stream")
        while line := streamed.readline():
            if line.startswith(b"data: "):
                pieces.append(json.loads(line[6:])["text_output"])
                release()  # passed on as it came: the model made the rest only after the first arrived
    connection.close()
    assert "".join(pieces) == "one two " * 10
    eventually(lambda: bed.usage("output", "pro") == before + 3 + 20)


def test_tritonclient_grpc_streaming_through_the_gateway(bed: Bed) -> None:
    """ModelStreamInfer, one request a stream (tritonclient's start_stream, async_stream_infer, stop_stream):
    each of the decoupled model's responses reaches the client as Triton sends it, metered from the
    model's count outputs."""
    before = bed.usage("input", "pro"), bed.usage("output", "pro")
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{bed.gateway.ports[1]}")
    pieces: list[str] = []
    failures: list[Any] = []
    inputs = []
    for name, datatype, value in (
        ("text_input", "BYTES", np.array([b"one two"], dtype=np.object_)),
        ("max_tokens", "INT32", np.array([20], dtype=np.int32)),
        ("stream", "BOOL", np.array([True], dtype=bool)),
    ):
        tensor = grpcclient.InferInput(name, [1], datatype)
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    with holding(bed.models, "writer") as release:

        def received(result: Any, error: Any) -> None:
            if error is not None:
                failures.append(error)
                return
            pieces.extend(value.decode() for value in result.as_numpy("text_output").reshape(-1))
            release()  # the model makes the rest only once its first response has reached the client

        client.start_stream(callback=received, headers={"authorization": f"Bearer {KEYS['pro']}"})
        client.async_stream_infer("writer", inputs)
        client.stop_stream()  # ends the request stream, then waits for every response
    client.close()
    assert failures == []
    assert "".join(pieces) == "one two " * 10
    expected = (before[0] + 2, before[1] + 20)
    eventually(lambda: (bed.usage("input", "pro"), bed.usage("output", "pro")) == expected)


# Quality samples, feedback and the SLA's counts


def _post(bed: Bed, path: str, body: bytes, key: str = KEYS["pro"], **headers: str) -> client.Reply:
    sent = {"authorization": f"Bearer {key}", "content-type": "application/json", **headers}
    return client.request(f"{bed.url.removesuffix('/v1')}{path}", data=body, headers=sent)


def _records(bed: Bed, kind: str, request_id: str) -> list[LogRecord]:
    def wanted(record: LogRecord) -> bool:
        found = record["attributes"]
        return found.get("tollway.record") == kind and found.get("request_id") == request_id

    return bed.samples.records(wanted, timeout=20)


def test_a_sampled_stream_reaches_the_sink_masked_and_put_back_together(bed: Bed) -> None:
    asked = [
        {"role": "user", "content": "mail ana.ruiz@corp.example with sk-A1b2C3d4E5 and 4111 1111 1111 1111"}
    ]
    stream = bed.client().chat.completions.create(
        model="assistant", messages=asked, max_tokens=6, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    usage = chunks[-1].usage
    assert usage is not None
    request_id = stream.response.headers["x-request-id"]
    [record] = _records(bed, "sample", request_id)
    sent = json.loads(record["body"]["request"])
    assert sent["messages"][0]["content"] == f"mail {MASK} with {MASK} and {MASK}"
    # the events' text put back together, masked too (the stand-in model repeats what it was asked)
    assert text.startswith("mail ana.ruiz@corp.example with sk-A1b2C3d4E5")
    assert record["body"]["response"] == text.replace("ana.ruiz@corp.example", MASK).replace(
        "sk-A1b2C3d4E5", MASK
    )
    attributes = record["attributes"]
    assert {key: attributes[key] for key in ("model", "version", "tier", "consumer", "status", "path")} == {
        "model": "assistant",
        "version": "3",
        "tier": "pro",
        "consumer": "pro-key",
        "status": "200",
        "path": "/v1/chat/completions",
    }
    assert (attributes["input_tokens"], attributes["output_tokens"]) == (str(usage.prompt_tokens), "6")
    assert float(attributes["ttft_ms"]) >= 0 and attributes["response_cut"] == "-"
    assert attributes["client_ip"] == "127.0.0.1" and attributes["prompt_flags"] == "-"  # the bed's clients
    assert "authorization" not in json.dumps(record) and KEYS["pro"] not in json.dumps(record)


def test_a_tier_that_samples_nothing_sends_nothing(bed: Bed) -> None:
    """On one connection (one Envoy worker, whose records go out in order): once pro's later request is in
    the sink, free's would be too, had it been sampled."""
    connection = http.client.HTTPConnection("127.0.0.1", bed.gateway.ports[0], timeout=10)
    ids = []
    for key in (KEYS["free"], KEYS["pro"]):
        headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
        connection.request(
            "POST",
            "/v1/chat/completions",
            body=json.dumps({"model": "assistant", "messages": ASKED}),
            headers=headers,
        )
        response = connection.getresponse()
        assert response.status == 200 and response.read()
        ids.append(response.headers["x-request-id"])
    connection.close()
    assert _records(bed, "sample", ids[1])
    assert not [
        record for record in bed.samples.all_records() if record["attributes"]["request_id"] == ids[0]
    ]


def test_a_body_that_is_no_valid_utf8_is_sampled_valid(bed: Bed) -> None:
    """An OTLP string must be UTF-8: one bad byte would make the collector refuse the whole batch."""
    body = b'{"model": "writer", "prompt": "caf\xe9 \xff", "max_tokens": 1}'
    reply = _post(bed, "/v1/completions", body)
    [record] = _records(bed, "sample", reply.headers["x-request-id"])
    assert record["body"]["request"] == '{"model": "writer", "prompt": "caf? ?", "max_tokens": 1}'


def test_every_answer_carries_a_request_id_the_gateway_made(bed: Bed) -> None:
    forged = "11111111-2222-3333-4444-555555555555"
    answers = [
        _post(
            bed,
            "/v1/completions",
            json.dumps({"model": "writer", "prompt": "x"}).encode(),
            **{"x-request-id": forged},
        ),
        _post(bed, "/v1/completions", b"{}", key="wrong"),  # 401, made by the gateway
        _post(bed, "/v1/nothing-here", b"{}"),  # 404
    ]
    assert [answer.status for answer in answers] == [200, 401, 404]
    ids = [answer.headers["x-request-id"] for answer in answers]
    assert all(re.fullmatch(r"[0-9a-f-]{36}", found) for found in ids) and forged not in ids
    assert len(set(ids)) == 3


def test_feedback_on_an_answer_is_counted_per_version_and_joins_its_sample(bed: Bed) -> None:
    answer = bed.client().chat.completions.with_raw_response.create(
        model="assistant", messages=ASKED, max_tokens=2
    )
    rated = answer.headers["x-request-id"]
    labels = {"model": "assistant", "version": "3", "tier": "pro", "rating": "2"}
    before = summed(bed.gateway.stats(), "envoy_tollway_feedback", **labels)
    said = {
        "request_id": rated,
        "model": answer.parse().model,
        "rating": 2,
        "comment": "wrong, ask ana@corp.example",
    }
    reply = _post(bed, "/v1/feedback", json.dumps(said).encode())
    assert (reply.status, reply.json()) == (202, {"status": "recorded"})
    [record] = _records(bed, "feedback", rated)
    assert record["body"] == f"wrong, ask {MASK}"
    assert record["attributes"]["rating"] == "2" and record["attributes"]["consumer"] == "pro-key"
    assert _records(bed, "sample", rated)  # the rated answer's sample: the two join on request_id
    assert eventually(
        lambda: summed(bed.gateway.stats(), "envoy_tollway_feedback", **labels) == before + 1, timeout=20
    )


def test_feedback_read_two_ways_or_on_a_model_the_tier_may_not_use_is_refused(bed: Bed) -> None:
    twice = b'{"request_id": "r1", "model": "assistant", "rating": 1, "rating": 5}'
    assert _post(bed, "/v1/feedback", twice).json()["error"] == {
        "code": 400,
        "type": "invalid_request_error",
        "message": "rating appears twice in the request",
    }
    other = json.dumps({"request_id": "r1", "model": "writer", "rating": 5}).encode()
    assert _post(bed, "/v1/feedback", other, key=KEYS["free"]).status == 403
    assert _post(bed, "/v1/feedback", other, key="wrong").status == 401


def test_the_same_prompt_again_is_counted_as_a_regeneration(bed: Bed) -> None:
    """Each Envoy worker remembers its own recent prompts: one connection keeps both on one worker."""
    labels = {"model": "assistant", "version": "3", "tier": "free"}
    before = summed(bed.gateway.stats(), "envoy_tollway_regenerations", **labels)
    connection = http.client.HTTPConnection("127.0.0.1", bed.gateway.ports[0], timeout=10)
    headers = {"authorization": f"Bearer {KEYS['free']}", "content-type": "application/json"}
    body = json.dumps(
        {"model": "assistant", "messages": [{"role": "user", "content": f"again {time.time()}"}]}
    )
    for _ in range(3):
        connection.request("POST", "/v1/chat/completions", body=body, headers=headers)
        response = connection.getresponse()
        assert response.status == 200 and response.read()
    connection.close()
    assert eventually(
        lambda: summed(bed.gateway.stats(), "envoy_tollway_regenerations", **labels) == before + 2, timeout=20
    )


def test_the_sla_counts_answers_and_errors_but_not_the_callers_own_429s(bed: Bed) -> None:
    def counted(tier_name: str) -> tuple[float, float]:
        text = bed.gateway.stats()
        return tuple(
            summed(text, f"envoy_tollway_sla_{kind}", tier=tier_name) for kind in ("requests", "errors")
        )

    before = counted("single")
    first = bed.client("single").completions.create(model="writer", prompt="x", max_tokens=20, stream=True)
    next(iter(first))
    with pytest.raises(openai.RateLimitError):  # over its own concurrency: not the SLA's business
        bed.client("single").completions.create(model="writer", prompt="y", max_tokens=1)
    list(first)
    assert eventually(lambda: counted("single") == (before[0] + 1, before[1]), timeout=20)
    latency = summed(bed.gateway.stats(), "envoy_tollway_sla_latency_ms_bucket", tier="single", le="5000")
    assert latency >= 1


def test_consumers_read_each_models_capacity_which_changes_without_reloading_envoy(bed: Bed) -> None:
    def capacity(key: str = KEYS["free"]) -> list[dict[str, Any]]:
        reply = client.request(f"{bed.url}/capacity", headers={"authorization": f"Bearer {key}"})
        assert reply.status == 200
        return list(reply.json()["data"])

    def reloads() -> float:
        text = bed.gateway.stats()
        return summed(text, "envoy_listener_manager_lds_update_success") + summed(
            text, "envoy_cluster_manager_cds_update_success"
        )

    # gateway-config wrote what the operator would: nothing observed yet
    assert capacity() == [
        {
            "model": "assistant",
            "state": "unknown",
            "at_capacity": False,
            "estimated_wait_seconds": None,
            "ready_replicas": 0,
            "max_replicas": 1,
            "observed_at": None,
        }
    ]
    assert {entry["model"] for entry in capacity(KEYS["pro"])} == {"assistant", "embedder", "writer"}
    before = reloads()
    busy = {"model": "assistant", "state": "at_capacity", "at_capacity": True, "estimated_wait_seconds": 4.5}
    for index in range(len(bed.gateway.replicas)):  # as the kubelet swaps a ConfigMap's files: a rename
        document = bed.gateway.replica_dir(index) / "capacity" / "capacity.jsonl"
        document.with_suffix(".new").write_text(json.dumps(busy, separators=(",", ":")) + "\n")
        document.with_suffix(".new").rename(document)
    assert eventually(lambda: capacity() == [busy], timeout=20)
    assert reloads() == before


def test_tokens_are_counted_per_model_version_as_they_are_per_consumer(bed: Bed) -> None:
    """The cost rules set a model's tokens against its cost: the same numbers the tier is charged."""
    labels = {"model": "writer", "version": "1", "tier": "pro"}

    def counted() -> tuple[float, float, float]:
        text = bed.gateway.stats()
        per_model = (
            summed(text, f"envoy_tollway_model_{kind}_tokens", **labels) for kind in ("input", "output")
        )
        return (*per_model, summed(text, "envoy_tollway_usage_output", tier="pro", consumer="pro-key"))

    before = counted()
    answer = bed.client().completions.create(model="writer", prompt="count me", max_tokens=4)
    assert answer.usage is not None
    used = (answer.usage.prompt_tokens, answer.usage.completion_tokens)
    after = eventually(lambda: (found := counted())[1] > before[1] and found, timeout=20)
    assert (after[0] - before[0], after[1] - before[1]) == used
    assert after[2] - before[2] == used[1]
