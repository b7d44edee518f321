"""The gateway's Lua programs on the OpenAI API's routes, under LuaJIT through the fake Envoy handle: the
model named in the body resolved, admitted, limited and routed; the model list answered per tier; a stream
passed on chunk by chunk and metered from its usage comments, with its time to first token and per token."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import pytest
from lua_gateway import GatewayProgram, Module, lua_text
from test_gateway_lua import ANSWERED, DATA, NOW
from tritonclient.grpc import service_pb2

OPENAI = {"kind": "openai"}
CHAT = {":path": "/v1/chat/completions", "authorization": "Bearer k-pro"}
KEY_HEADERS = {"authorization": "Bearer k-pro"}
START_MS = 1_790_000_000_000


def _entry(name: str, version: int, sunset: int | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {"id": name, "json": json.dumps({"id": name, "object": "model"})}
    if sunset is not None:
        found["sunset"] = sunset
    return found


def openai_data() -> dict[str, Any]:
    data = copy.deepcopy(DATA)
    data["models"]["chat"]["openai"] = {
        "kind": "chat",
        "path": "/v1/chat/completions",
        "cluster": "triton-openai|chat",
        "max_tokens": 64,
        "input": "prompt_tokens",
        "output": "completion_tokens",
    }
    data["models"]["vision"] = {**data["models"]["chat"], "openai": None, "versions": {1: {}}, "aliases": {}}
    data["models"]["vision"]["aliases"] = {"latest": 1}
    for tier in data["tiers"].values():
        tier["openai_clusters"] = {}
        tier["allowed"]["vision@1"] = True
        tier["scopes"]["vision"] = {}
    data["tiers"]["pro"]["openai_clusters"] = {"chat": "triton-openai|chat|pro"}
    data["listings"].append(
        [
            _entry("chat", 2),
            _entry("chat:stable", 1, sunset=NOW + 86_400),
            _entry("chat@1", 1, sunset=NOW + 86_400),
            _entry("chat@2", 2),
        ]
    )
    data["tiers"]["pro"]["listing"] = len(data["listings"])  # Lua's 1-based position
    return data


@pytest.fixture(scope="module")
def gateway() -> GatewayProgram:
    return GatewayProgram(openai_data(), NOW)


def chat(**fields: Any) -> bytes:
    return json.dumps({"model": "chat", "messages": [{"role": "user", "content": "hi"}], **fields}).encode()


def test_a_chat_request_is_admitted_on_its_body_limited_and_sent_to_the_models_openai_server(
    gateway: GatewayProgram,
) -> None:
    body = chat(max_tokens=100, stream=True)
    handle = gateway.request(
        {**CHAT, "x-tollway-model-version": "1", "x-tollway-priority": "1"},
        body,
        route=OPENAI,
        clock=[START_MS],
    )
    assert handle.reply is None and handle.errors == []
    # Before the body: the caller only (its request limits wait for the model, named in the body).
    assert handle.after_headers == {
        "kind": "openai",
        "consumer": "acme",
        "tier": "pro",
        "counter_consumer": "acme",
        "counter_tier": "pro",
        "credential": "ai/pro-key",
        "start_ms": str(START_MS),
    }
    reserve = math.ceil(len(body) / 4) + 100
    assert handle.tollway == {
        **handle.after_headers,
        "model": "chat",
        "version": "2",
        "rpm_grpc_closed": "pro",  # the request limits' filters after the body
        "tpm_closed": "pro/chat",  # what the settlement charges
        "tpm_reserved_closed": "pro/chat",  # what the token filters check the reservation against
        "reserve": str(reserve),
        "estimate": str(reserve),
        "left_input": "0",
        "left_output": str(reserve),
        "left_unreported": "1",
    }
    # The client's version and priority are dropped; the gateway's say what was resolved.
    assert handle.header_values == {
        ":path": "/v1/chat/completions",
        "x-tollway-model-version": "2",
        "x-tollway-priority": "2",
        "x-tollway-cluster": "triton-openai|chat|pro",
    }
    assert handle.body_bytes == body  # the body goes on as the client wrote it


@pytest.mark.parametrize(
    ("model", "version"),
    [("chat", "2"), ("chat:stable", "1"), ("chat@1", "1"), ("chat@2", "2"), ("chat:latest", "2")],
)
def test_the_model_field_names_a_model_and_its_alias_or_pinned_version(
    gateway: GatewayProgram, model: str, version: str
) -> None:
    handle = gateway.request(CHAT, chat(model=model), route=OPENAI)
    assert handle.reply is None and handle.tollway["version"] == version
    assert handle.tollway["reserve"] == str(math.ceil(len(chat(model=model)) / 4) + 64)  # the model's default


@pytest.mark.parametrize(
    ("key", "model", "status", "why"),
    [
        ("k-pro", "nope", 404, "no model nope"),
        ("k-pro", "chat@9", 404, "model chat has no version or alias 9"),
        ("k-pro", "chat:canary", 404, "model chat has no version or alias canary"),
        ("k-pro", "chat:legacy", 410, "this model version was switched off on 2026-09-21"),
        ("k-free", "chat@1", 403, "tier free may not use chat version 1"),
        ("k-pro", "vision", 404, "model vision is served on /v1/models/vision/infer only"),
    ],
)
def test_a_model_the_caller_cannot_use_is_refused_with_the_status_the_api_promises(
    gateway: GatewayProgram, key: str, model: str, status: int, why: str
) -> None:
    handle = gateway.request({**CHAT, "authorization": f"Bearer {key}"}, chat(model=model), route=OPENAI)
    assert handle.answer == (status, why)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'{"model":"chat","model":"nope"}', "model appears twice in the request"),
        (b'{"model":"ch\\u0061t"}', "model must be a model's name: a string without escape sequences"),
        (b'{"m\\u006fdel":"chat"}', "escape sequences are not accepted in the keys of the request"),
        (b'{"messages":[]}', "model must be a model's name: a string without escape sequences"),
        (b'{"model":"chat","stream":1}', "stream must be true or false"),
        (b'{"model":"chat","max_tokens":1e9}', "max_tokens must be a positive whole number"),
        (b'{"model":"chat","max_tokens":0}', "max_tokens must be a positive whole number"),
        (b'{"model":"chat"} {"model":"x"}', "the request body holds more than one JSON value"),
    ],
)
def test_a_body_the_gateway_and_the_model_could_read_differently_is_refused(
    gateway: GatewayProgram, body: bytes, why: str
) -> None:
    assert gateway.request(CHAT, body, route=OPENAI).answer == (400, why)


def test_max_completion_tokens_wins_over_max_tokens_as_the_models_server_reads_it(
    gateway: GatewayProgram,
) -> None:
    body = chat(max_tokens=10, max_completion_tokens=300)
    handle = gateway.request(CHAT, body, route=OPENAI)
    assert handle.tollway["reserve"] == str(math.ceil(len(body) / 4) + 300)
    body = chat(max_tokens=1000, max_completion_tokens=None)  # present and null: the model's default
    assert gateway.request(CHAT, body, route=OPENAI).tollway["reserve"] == str(math.ceil(len(body) / 4) + 64)


def test_a_model_is_called_on_its_own_route_only(gateway: GatewayProgram) -> None:
    handle = gateway.request({**CHAT, ":path": "/v1/completions"}, chat(), route=OPENAI)
    assert handle.answer == (400, "model chat answers /v1/chat/completions")


def test_the_model_list_holds_what_the_tier_may_use_until_its_sunset(gateway: GatewayProgram) -> None:
    handle = gateway.request({**CHAT, ":path": "/v1/models"}, route={"kind": "models"})
    assert handle.reply is not None and handle.reply.status == 200
    listed = json.loads(handle.reply.body)
    assert listed["object"] == "list"
    assert [entry["id"] for entry in listed["data"]] == ["chat", "chat:stable", "chat@1", "chat@2"]
    one = gateway.request({**CHAT, ":path": "/v1/models/chat%3Astable"}, route={"kind": "model"})
    assert one.reply is not None and json.loads(one.reply.body)["id"] == "chat:stable"
    unknown = gateway.request({**CHAT, ":path": "/v1/models/chat@7"}, route={"kind": "model"})
    assert unknown.answer == (404, "no model of that name for tier pro")
    later = GatewayProgram(openai_data(), NOW + 86_400)  # version 1's sunset
    after = later.request({**CHAT, ":path": "/v1/models"}, route={"kind": "models"})
    assert after.reply is not None
    assert [entry["id"] for entry in json.loads(after.reply.body)["data"]] == ["chat", "chat@2"]
    anonymous = gateway.request({":path": "/v1/models"}, route={"kind": "models"})
    assert anonymous.answer is not None and anonymous.answer[0] == 401


# Streams

STREAMED = {**ANSWERED, "content-type": "text/event-stream"}


def streamed_state(**changes: str) -> dict[str, dict[str, str]]:
    state = {
        "kind": "openai",
        "tier": "pro",
        "consumer": "acme",
        "model": "chat",
        "version": "2",
        "reserve": "40",
        "estimate": "40",
        "start_ms": str(START_MS),
        "left_input": "0",
        "left_output": "40",
        "left_unreported": "1",
    }
    return {"tollway": {**state, **changes}}


def event(text: str, input_tokens: int, output_tokens: int) -> bytes:
    data = json.dumps({"choices": [{"delta": {"content": text}}]})
    return f"data: {data}\n\n: usage {input_tokens} {output_tokens}\n\n".encode()


def test_a_stream_is_passed_on_chunk_by_chunk_and_metered_from_its_last_usage_comment(
    gateway: GatewayProgram,
) -> None:
    whole = b"".join(event(f"w{n} ", 7, n) for n in range(1, 51)) + b"data: [DONE]\n\n"
    cut = [whole[at : at + 37] for at in range(0, len(whole), 37)]  # comments cut anywhere
    # the first chunk 120 ms after the request, each of the next ones 2 ms apart
    clock = [START_MS + 120 + 2 * index for index in range(len(cut))]
    handle = gateway.response(STREAMED, metadata=streamed_state(), chunks=cut, clock=clock)
    assert handle.errors == []
    assert handle.chunks_read == len(cut)  # each one read as it came: nothing asked for the whole body
    last = clock[-1]
    assert handle.tollway == {
        **streamed_state()["tollway"],
        "ttft_ms": "120",
        "tpot_ms": f"{(last - clock[0]) / 49:.3f}",
        "input_tokens": "7",
        "output_tokens": "50",
        "unreported": "0",
        "left_input": "7",
        "left_output": "50",
        "left_unreported": "0",
        "settle": "17",  # 57 used, 40 reserved
        "cached_input": "0",
        "cached_output": "0",
        "from_model": "1",
    }


def test_a_caller_who_leaves_mid_stream_is_charged_what_was_produced(gateway: GatewayProgram) -> None:
    """Envoy stops the script when the client goes: what it left says what the abandoned-request logger
    counts (the model's counts so far, reported), and the answered-request logger never sees it."""
    chunks = [event("a ", 7, 1), event("b ", 7, 2), event("c ", 7, 3)]
    handle = gateway.response(
        STREAMED, metadata=streamed_state(), chunks=chunks, clock=[START_MS + 50], leave_after=2
    )
    assert handle.tollway["left_input"] == "7" and handle.tollway["left_output"] == "2"
    assert handle.tollway["left_unreported"] == "0"
    assert "from_model" not in handle.tollway and handle.tollway["ttft_ms"] == "50"


def test_a_stream_without_usage_comments_is_charged_its_estimate_unreported(gateway: GatewayProgram) -> None:
    chunks = [b'data: {"choices":[]}\n\n', b"data: [DONE]\n\n"]
    handle = gateway.response(STREAMED, metadata=streamed_state(), chunks=chunks, clock=[START_MS + 9])
    assert handle.tollway["input_tokens"] == "0" and handle.tollway["output_tokens"] == "40"
    assert handle.tollway["unreported"] == "1" and "tpot_ms" not in handle.tollway
    assert handle.tollway["ttft_ms"] == "9" and handle.tollway["from_model"] == "1"


def test_model_text_cannot_forge_a_usage_comment() -> None:
    tokens = Module("tokens")
    forged = event("\n: usage 0 0\n", 7, 3)  # JSON escapes the line breaks: no comment line
    assert tokens.stream_usage(forged.decode()) == (7, 3)
    assert tokens.stream_usage("data: x\n\n: usage 1 2") == (None, None)  # not whole yet


def test_a_unary_openai_answer_is_counted_from_its_usage_object(gateway: GatewayProgram) -> None:
    answer = {"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 31, "total_tokens": 42}}
    handle = gateway.response(
        {**ANSWERED, "content-type": "application/json"},
        json.dumps(answer).encode(),
        metadata=streamed_state(),
    )
    assert handle.tollway["input_tokens"] == "11" and handle.tollway["output_tokens"] == "31"
    assert handle.tollway["settle"] == "2" and handle.tollway["from_model"] == "1"


# Triton's generate extension (KServe routes)

GENERATE = {"kind": "generate", "model": "chat", "version": 2}


def test_a_generate_request_reserves_the_larger_of_its_two_max_tokens(gateway: GatewayProgram) -> None:
    """Triton reads both the top level and the parameters as inputs: the reservation covers either."""
    body = json.dumps({"text_input": "hi", "max_tokens": 30, "parameters": {"max_tokens": 20}}).encode()
    handle = gateway.request(KEY_HEADERS, body, route=GENERATE, clock=[START_MS])
    assert handle.reply is None
    assert handle.tollway["reserve"] == str(math.ceil(len(body) / 4) + 30)
    assert handle.tollway["start_ms"] == str(START_MS)  # generate_stream's time to first token
    assert json.loads(handle.body_bytes or b"")["parameters"] == {"priority": 2, "max_tokens": 20}


def test_a_generate_request_takes_no_binary_tensor_data(gateway: GatewayProgram) -> None:
    body = b'{"text_input": "hi"}'
    handle = gateway.request({**KEY_HEADERS, "inference-header-content-length": "5"}, body, route=GENERATE)
    assert handle.answer == (400, "generate takes JSON only: no Inference-Header-Content-Length")


def test_generate_stream_is_metered_from_the_models_own_counts(gateway: GatewayProgram) -> None:
    chunks = [
        b'data: {"model_name":"chat","text_output":"a "}\n\n',
        b'data: {"model_name":"chat","text_output":"b "}\n\ndata: {"model_name":"chat","prompt_',
        b'tokens":4,"completion_tokens":2,"text_output":""}\n\n',
    ]
    state = streamed_state(kind="generate")
    handle = gateway.response(STREAMED, metadata=state, chunks=chunks, clock=[START_MS + 30, START_MS + 50])
    assert handle.tollway["input_tokens"] == "4" and handle.tollway["output_tokens"] == "2"
    assert handle.tollway["ttft_ms"] == "30" and handle.tollway["tpot_ms"] == "20.000"
    assert handle.tollway["unreported"] == "0" and handle.tollway["from_model"] == "1"


# gRPC ModelStreamInfer


def stream_response(text: str, counts: tuple[int, int] | None = None) -> bytes:
    """One framed ModelStreamInferResponse as Triton sends it: a text piece and, last, the counts."""
    response = service_pb2.ModelInferResponse(model_name="chat", model_version="2")
    outputs = [("text_output", "BYTES", len(text.encode()).to_bytes(4, "little") + text.encode())]
    if counts is not None:
        outputs += [
            ("num_input_tokens", "UINT32", counts[0].to_bytes(4, "little")),
            ("num_output_tokens", "UINT32", counts[1].to_bytes(4, "little")),
        ]
    for name, datatype, raw in outputs:
        response.outputs.add(name=name, datatype=datatype, shape=[1])
        response.raw_output_contents.append(raw)
    message = service_pb2.ModelStreamInferResponse(infer_response=response).SerializeToString()
    return b"\0" + len(message).to_bytes(4, "big") + message


def test_a_model_stream_infer_stream_is_metered_from_the_count_outputs_however_it_is_cut() -> None:
    protobuf = Module("protobuf")
    whole = b"".join([stream_response("a "), stream_response("b "), stream_response("", (5, 2))])
    for size in (1, 3, 7, 64, len(whole)):
        read = protobuf.stream_counts("num_input_tokens", "num_output_tokens")
        found = [read(lua_text(whole[at : at + size])) for at in range(0, len(whole), size)]
        assert found[-1] == (5, 2)
        assert found[0] == (None, None) or size == len(whole)


def test_a_model_stream_infer_request_carries_one_message_only(gateway: GatewayProgram) -> None:
    request = service_pb2.ModelInferRequest(model_name="chat")
    message = request.SerializeToString()
    frame = b"\0" + len(message).to_bytes(4, "big") + message
    path = {":path": "/inference.GRPCInferenceService/ModelStreamInfer", "x-api-key": "k-pro"}
    assert gateway.request(path, frame + frame, route={"kind": "grpc"}).answer == (
        400,
        "send one uncompressed gRPC message",
    )
    one = gateway.request(path, frame, route={"kind": "grpc"}, clock=[START_MS])
    assert one.reply is None and one.tollway["start_ms"] == str(START_MS)
    assert one.tollway["rpm_grpc_closed"] == "pro" and "reserve" in one.tollway


def test_a_model_stream_infer_response_is_passed_on_and_metered(gateway: GatewayProgram) -> None:
    data = openai_data()
    data["models"]["chat"]["input"], data["models"]["chat"]["output"] = (
        "num_input_tokens",
        "num_output_tokens",
    )
    program = GatewayProgram(data, NOW)
    whole = stream_response("a ") + stream_response("", (5, 1))
    chunks = [whole[:9], whole[9:40], whole[40:]]
    state = streamed_state(kind="grpc")
    handle = program.response({**ANSWERED, "content-type": "application/grpc"}, metadata=state, chunks=chunks)
    assert handle.chunks_read == 3 and handle.errors == []
    assert handle.tollway["input_tokens"] == "5" and handle.tollway["output_tokens"] == "1"
    assert handle.tollway["from_model"] == "1"


def test_only_the_gateway_tells_a_models_openai_server_that_a_tier_opted_out_of_its_cache() -> None:
    data = openai_data()
    data["tiers"]["pro"]["cache_off"] = True
    opted_out = GatewayProgram(data, NOW).request(CHAT, chat(), route=OPENAI)
    assert opted_out.header_values["x-tollway-cache"] == "off"
    # A client's own header never reaches the model: one that says "off" cannot make another tier's request
    # skip the cache, and nothing else it writes there is read.
    forged = GatewayProgram(openai_data(), NOW).request(
        {**CHAT, "x-tollway-cache": "off"}, chat(), route=OPENAI
    )
    assert forged.reply is None and "x-tollway-cache" not in forged.header_values


@pytest.mark.parametrize("streamed", [True, False])
def test_an_answer_from_the_cache_is_metered_as_cached_tokens_too(
    gateway: GatewayProgram, streamed: bool
) -> None:
    headers = {**(STREAMED if streamed else ANSWERED), "x-tollway-cache": "hit", "age": "12"}
    usage = {"prompt_tokens": 7, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 7}}
    whole = json.dumps({"choices": [{"message": {"content": "a b c"}}], "usage": usage}).encode()
    chunks = [event("a ", 7, 1), event("b ", 7, 2), event("c ", 7, 3), b"data: [DONE]\n\n"]
    handle = gateway.response(
        headers,
        None if streamed else whole,
        metadata=streamed_state(),
        chunks=chunks if streamed else None,
        clock=[START_MS + 5, START_MS + 6],
    )
    assert handle.errors == []
    found = handle.tollway
    assert (found["cache"], found["input_tokens"], found["output_tokens"]) == ("hit", "7", "3")
    assert (found["cached_input"], found["cached_output"], found["from_model"]) == ("7", "3", "1")


@pytest.mark.parametrize(
    ("said", "recorded"), [("miss", "miss"), ("skip", "skip"), ("off", "off"), ("HIT", None)]
)
def test_other_answers_are_metered_as_made_by_the_model(
    gateway: GatewayProgram, said: str, recorded: str | None
) -> None:
    chunks = [event("a ", 7, 1), b"data: [DONE]\n\n"]
    headers = {**STREAMED, "x-tollway-cache": said}
    handle = gateway.response(headers, metadata=streamed_state(), chunks=chunks, clock=[START_MS + 5])
    assert handle.tollway.get("cache") == recorded
    assert (handle.tollway["cached_input"], handle.tollway["cached_output"]) == ("0", "0")
    assert handle.tollway["output_tokens"] == "1"


def free_hits_data(*, shared: bool = True) -> dict[str, Any]:
    """Tier pro's cache hits take nothing from its token limits; chat's answer cache is shared (or not)."""
    data = openai_data()
    data["tiers"]["pro"]["hits_free"] = True
    data["models"]["chat"]["openai"]["shared_cache"] = shared
    return data


def test_a_tier_whose_hits_are_free_asks_the_shared_cache_first_and_a_held_answer_reserves_nothing() -> None:
    program = GatewayProgram(free_hits_data(), NOW)
    program.answer_call = lambda *_: (204, "")
    body = chat(max_tokens=100)
    handle = program.request(CHAT, body, route=OPENAI)
    assert handle.reply is None and handle.errors == []
    [(cluster, headers, sent, timeout)] = handle.calls
    # The model's server (not the tier's concurrency-limited cluster) is asked about the very request, as
    # resolved: only the cache is read.
    assert (cluster, sent, timeout) == ("triton-openai|chat", body.decode(), 250)
    assert headers == {
        ":method": "POST",
        ":path": "/v1/chat/completions",
        ":authority": "openai",
        "content-type": "application/json",
        "x-tollway-model-version": "2",
        "x-tollway-cache-probe": "1",
    }
    found = handle.tollway
    # No scope for the token filters, no reservation: they let it by even when the tier's tokens are spent.
    assert "reserve" not in found and "tpm_reserved_closed" not in found
    assert found["expect_hit"] == "1" and found["tpm_closed"] == "pro/chat"  # what a miss would settle
    assert found["left_output"] == found["estimate"]  # a caller who leaves is still charged its estimate
    assert found["rpm_grpc_closed"] == "pro"  # and it counts as a request
    assert handle.header_values["x-tollway-cluster"] == "triton-openai|chat|pro"
    assert "x-tollway-cache-probe" not in handle.header_values  # the request itself is answered in full


@pytest.mark.parametrize(("status", "body"), [(404, ""), (503, "upstream connect error"), (200, "{}")])
def test_a_request_the_cache_does_not_hold_reserves_its_tokens_as_usual(status: int, body: str) -> None:
    program = GatewayProgram(free_hits_data(), NOW)
    program.answer_call = lambda *_: (status, body)  # anything but 204, a failed call included, is a no
    handle = program.request(CHAT, chat(max_tokens=100), route=OPENAI)
    assert len(handle.calls) == 1 and "expect_hit" not in handle.tollway
    assert handle.tollway["tpm_reserved_closed"] == "pro/chat" and int(handle.tollway["reserve"]) > 100


@pytest.mark.parametrize(
    "changed",
    ["hits count", "pod cache", "tier opted out", "request over the tier's token cap"],
)
def test_the_cache_is_asked_only_where_a_hit_would_be_free(changed: str) -> None:
    data = free_hits_data(shared=changed != "pod cache")
    if changed == "hits count":
        del data["tiers"]["pro"]["hits_free"]
    if changed == "tier opted out":  # the operator never renders both; opting out wins
        data["tiers"]["pro"]["cache_off"] = True
    if changed == "request over the tier's token cap":
        data["tiers"]["pro"]["token_caps"]["chat"] = 50
    program = GatewayProgram(data, NOW)
    program.answer_call = lambda *_: (204, "")
    handle = program.request(CHAT, chat(max_tokens=100), route=OPENAI)
    assert handle.calls == [] and "expect_hit" not in handle.tollway
    if changed == "request over the tier's token cap":
        assert handle.answer is not None and handle.answer[0] == 429
    else:
        assert handle.tollway["tpm_reserved_closed"] == "pro/chat" and "reserve" in handle.tollway


def test_a_client_cannot_ask_a_models_server_what_its_cache_holds(gateway: GatewayProgram) -> None:
    handle = gateway.request({**CHAT, "x-tollway-cache-probe": "1"}, chat(), route=OPENAI)
    assert handle.reply is None and "x-tollway-cache-probe" not in handle.header_values


@pytest.mark.parametrize(("said", "settled"), [("hit", None), ("miss", "10"), ("skip", "10"), (None, "10")])
def test_an_expected_hit_is_charged_nothing_and_a_miss_after_all_every_token(
    said: str | None, settled: str | None
) -> None:
    """Between the probe and the request the answer may be evicted: the miss then served is charged in
    full at its end, as the reservation it skipped would have been."""
    state = streamed_state(expect_hit="1")
    del state["tollway"]["reserve"]
    headers = {**STREAMED, **({"x-tollway-cache": said} if said else {})}
    chunks = [event("a ", 7, 1), event("b ", 7, 3), b"data: [DONE]\n\n"]
    handle = GatewayProgram(free_hits_data(), NOW).response(
        headers, metadata=state, chunks=chunks, clock=[START_MS + 5, START_MS + 6, START_MS + 7]
    )
    assert handle.errors == []
    assert (handle.tollway["input_tokens"], handle.tollway["output_tokens"]) == ("7", "3")
    assert handle.tollway.get("settle") == settled
