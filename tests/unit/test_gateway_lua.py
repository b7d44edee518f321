"""The gateway's Lua program under LuaJIT, driven through a fake Envoy handle: what it answers, forwards,
charges and records for representative requests and responses. The data table is written out here in the
shape `render.envoy.lua_data` gives it; one test renders it from resources instead."""

from __future__ import annotations

import copy
import json
import math
from datetime import UTC, datetime
from typing import Any

import pytest
from lua_gateway import Certificate, GatewayProgram, Module, lua_text
from tritonclient.grpc import service_pb2

from tollway.api import ApiTier, ModelDeployment
from tollway.api.parse import parse
from tollway.render.envoy import lua_data
from tollway.translate.gateway import plan_gateway

from builders import api_tier, model_deployment

NOW = 1_790_000_000
KEY = {"authorization": "Bearer k-pro"}
INFER = {"kind": "infer", "model": "chat", "version": 2}
GRPC = {"kind": "grpc"}
MAX_BODY = 4096
MISSING = "missing credential: send Authorization: Bearer KEY or x-api-key: KEY"
ANSWERED = {":status": "200", "x-envoy-upstream-service-time": "3"}
"""A response from the model (Envoy's router adds the header), not one of the gateway's own."""
NOTHING_COUNTED = {"input_tokens": "0", "output_tokens": "0", "unreported": "0", "from_model": "1"}
"""What a model's answer that reports no tokens leaves for the usage logger."""
GRPC_INFER = {":path": "/inference.GRPCInferenceService/ModelInfer", "x-api-key": "k-pro"}


UNSAMPLED = {"ppm": None, "most": 16384, "redact": {"emails": True, "cards": True, "patterns": []}}
"""A tier that samples at its models' rate (0 here)."""


def tier(level: int, scopes: dict[str, str], **changes: Any) -> dict[str, Any]:
    return {
        "level": level,
        "fail_open": False,
        "retry_after": True,
        "allowed": {"chat@2": True, "chat@1": True},
        "scopes": {"chat": scopes},
        "clusters": {},
        "grpc_clusters": {},
        "token_caps": {},
        "jwt": None,
        "mtls": None,
        "sampling": UNSAMPLED,
        "prompt": [],
        "signals": False,
        **changes,
    }


DATA: dict[str, Any] = {
    "order": ["partners", "devices", "pro", "free"],
    "unauthenticated_scope": None,
    "refused_cluster": "refused",
    "unverified": {"ai/unverified-key": "pro"},
    "suspended": {"ai/stolen-key": "used from 40 networks (38 new to it) and 3 user agents in an hour"},
    "server_cluster": "triton-grpc|chat",
    "mtls_ports": {"8443": "devices"},
    "tiers": {
        "partners": tier(
            1,
            {"rpm": "partners"},
            jwt={"claim": "sub", "scopes": ["infer"]},
            clusters={"chat": "triton-http|chat|partners"},
            grpc_clusters={"chat": "triton-grpc|chat|partners"},
        ),
        "devices": tier(1, {"rpm": "devices"}, mtls=["spiffe://ai/devices/*"]),
        "pro": tier(2, {"rpm": "pro", "tpm": "pro/chat"}, token_caps={"chat": 2000}),
        "free": tier(3, {"rpm": "free"}, fail_open=True, retry_after=False, allowed={"chat@2": True}),
    },
    "listings": [],
    "models": {
        "chat": {
            "cluster": "triton-http|chat",
            "grpc_cluster": "triton-grpc|chat",
            "aliases": {"latest": 2, "stable": 1, "legacy": 0},
            "versions": {
                2: {},
                1: {
                    "announced": NOW - 60,
                    "sunset": NOW + 86_400,
                    "sunset_date": "2026-09-23",
                    "sunset_http": "Wed, 23 Sep 2026 00:00:00 GMT",
                    "link": "https://docs.example.com/chat-v2",
                },
                0: {"sunset": NOW - 1, "sunset_date": "2026-09-21"},
            },
            "input": "prompt_tokens",
            "output": "completion_tokens",
            "max_tokens": 256,
            "usage_output": "USAGE",
            "max_body": MAX_BODY,
            "retry_after": 7,
            "sample_ppm": 0,
        }
    },
    "credentials": {
        "k-pro": {"id": "ai/pro-key", "consumer": "acme", "tier": "pro"},
        "k-free": {"id": "ai/free-key", "consumer": "hobbyist", "tier": "free"},
        "k-old": {"id": "ai/old-key", "consumer": "acme", "tier": "pro", "expires": NOW},
        "k-unverified": {"id": "ai/unverified-key", "consumer": "newco", "tier": "pro"},
        "k-stolen": {"id": "ai/stolen-key", "consumer": "acme.eu", "tier": "pro"},
    },
}


@pytest.fixture(scope="module")
def gateway() -> GatewayProgram:
    return GatewayProgram(DATA, NOW)


def infer_body(**parameters: Any) -> bytes:
    prompt = {"name": "prompt", "shape": [1], "datatype": "BYTES", "data": ["hi"]}
    document: dict[str, Any] = {"inputs": [prompt]}
    if parameters:
        document["parameters"] = parameters
    return json.dumps(document, separators=(",", ":")).encode()


def grpc_frame(request: service_pb2.ModelInferRequest) -> bytes:
    message = request.SerializeToString()
    return b"\0" + len(message).to_bytes(4, "big") + message


def grpc_message(frame: bytes) -> service_pb2.ModelInferRequest:
    assert frame[0] == 0 and int.from_bytes(frame[1:5], "big") == len(frame) - 5
    return service_pb2.ModelInferRequest.FromString(frame[5:])


# HTTP


def test_an_http_infer_request_is_admitted_rewritten_routed_and_charged(gateway: GatewayProgram) -> None:
    body = infer_body(max_tokens=100, temperature=0.5)
    sent = {**KEY, "content-length": str(len(body)), "accept-encoding": "gzip", "x-tollway-cluster": "evil"}
    handle = gateway.request(sent, body, route=INFER)
    assert handle.reply is None and handle.errors == []
    assert json.loads(handle.body_bytes or b"")["parameters"] == {
        "priority": 2,
        "max_tokens": 100,
        "temperature": 0.5,
    }
    assert (handle.body_bytes or b"").startswith(body[: body.index(b"{", 1) + 1])  # the rest byte for byte
    assert handle.header_values == {
        "content-length": str(len(handle.body_bytes or b"")),
        "x-tollway-cluster": "triton-http|chat",
    }
    # On the headers alone: the caller, the model and the limits' scopes, for the request-count filters.
    admitted = {
        "kind": "infer",
        "consumer": "acme",
        "tier": "pro",
        "counter_consumer": "acme",
        "counter_tier": "pro",
        "model": "chat",
        "version": "2",
        "credential": "ai/pro-key",
        "rpm_closed": "pro",
        "tpm_closed": "pro/chat",
    }
    assert handle.after_headers == admitted
    assert handle.tollway == {
        **admitted,
        "tpm_reserved_closed": "pro/chat",  # the token filters' scope, set with the reservation
        "reserve": str(math.ceil(len(body) / 4) + 100),
        "estimate": str(math.ceil(len(body) / 4) + 100),  # what a response without usage is charged
        # ... and a caller who leaves before its answer
        **left_charge(0, math.ceil(len(body) / 4) + 100, reported=False),
    }
    assert handle.route_cache_cleared == 2  # the client's cluster header dropped, then the gateway's


def test_a_binary_infer_body_keeps_its_tail_and_its_json_length_header(gateway: GatewayProgram) -> None:
    document, tail = infer_body(), b"\x00\x01raw tensor bytes\xff"
    headers = {**KEY, "inference-header-content-length": str(len(document))}
    handle = gateway.request(headers, document + tail, route=INFER)
    rewritten = handle.body_bytes or b""
    json_length = int(handle.header_values["inference-header-content-length"])
    assert json.loads(rewritten[:json_length])["parameters"] == {"priority": 2}
    assert rewritten[json_length:] == tail
    assert handle.header_values["content-length"] == str(len(rewritten))
    assert handle.tollway["reserve"] == str(math.ceil(len(document + tail) / 4) + 256)  # the model's default


def left_charge(input_tokens: int, output_tokens: int, *, reported: bool) -> dict[str, str]:
    """The metadata that says what a caller who leaves now is charged."""
    return {
        "left_input": str(input_tokens),
        "left_output": str(output_tokens),
        "left_unreported": "0" if reported else "1",
    }


def test_a_tier_without_token_limits_reserves_nothing_and_may_fail_open(gateway: GatewayProgram) -> None:
    handle = gateway.request({"x-api-key": "k-free"}, infer_body(), route=INFER)
    assert handle.reply is None
    assert handle.tollway == {
        "kind": "infer",
        "consumer": "hobbyist",
        "tier": "free",
        "counter_consumer": "hobbyist",
        "counter_tier": "free",
        "model": "chat",
        "version": "2",
        "credential": "ai/free-key",
        "rpm_open": "free",
        "estimate": str(math.ceil(len(infer_body()) / 4) + 256),  # billed if the response hides its usage
        **left_charge(0, math.ceil(len(infer_body()) / 4) + 256, reported=False),
    }


def test_a_metadata_request_is_routed_without_limits_or_body(gateway: GatewayProgram) -> None:
    handle = gateway.request(KEY, route={"kind": "metadata", "model": "chat", "version": "1"})
    assert handle.reply is None
    assert handle.header_values == {"x-tollway-cluster": "triton-http|chat"}
    assert handle.tollway == {
        "kind": "metadata",
        "consumer": "acme",
        "tier": "pro",
        "counter_consumer": "acme",
        "counter_tier": "pro",
        "model": "chat",
        "version": "1",
        "credential": "ai/pro-key",
    }


def test_only_inference_for_a_model_that_scales_to_zero_is_marked_for_the_hold(
    gateway: GatewayProgram,
) -> None:
    """hold.lua holds what is marked `inference`: an inference request that counts against the limits, for a
    model that holds; a metadata request is not marked, nor is any request for a model that never sleeps."""
    models = {**DATA["models"], "chat": {**DATA["models"]["chat"], "holds": True}}
    holding = GatewayProgram({**DATA, "models": models}, NOW)
    body = infer_body(max_tokens=10)
    sent = {**KEY, "content-length": str(len(body))}
    infer = holding.request(sent, body, route=INFER)
    assert infer.reply is None and infer.after_headers["inference"] == "1"
    grpc = holding.request(
        GRPC_INFER, grpc_frame(service_pb2.ModelInferRequest(model_name="chat")), route=GRPC
    )
    assert grpc.reply is None and grpc.tollway["inference"] == "1"  # known only once its body is read
    metadata = holding.request(KEY, route={"kind": "metadata", "model": "chat", "version": "1"})
    assert metadata.reply is None and "inference" not in metadata.tollway
    awake = gateway.request(sent, body, route=INFER)
    assert awake.reply is None and "inference" not in awake.tollway


def test_a_metadata_or_readiness_request_with_a_body_gets_400(gateway: GatewayProgram) -> None:
    for kind in ("metadata", "ready"):
        handle = gateway.request(KEY, b"{}", route={"kind": kind, "model": "chat", "version": "1"})
        assert handle.answer == (400, "this request takes no body")


def test_a_request_off_the_model_routes_is_left_to_envoy(gateway: GatewayProgram) -> None:
    handle = gateway.request({"x-tollway-cluster": "evil", "x-tollway-model-version": "1"})
    # what only the gateway may say (the cluster, the version a model's OpenAI server answers with) is dropped
    assert handle.reply is None and handle.header_values == {} and handle.tollway == {}


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({}, MISSING),
        ({"authorization": "Bearer nope"}, "invalid API key or token"),
        (
            {"authorization": "Basic k-pro"},
            MISSING,
        ),
        ({"x-api-key": "k-old"}, "API key expired"),
    ],
)
def test_a_caller_without_a_valid_key_gets_401(
    gateway: GatewayProgram, headers: dict[str, str], why: str
) -> None:
    handle = gateway.request(headers, infer_body(), route=INFER)
    assert handle.reply is not None
    assert (handle.reply.status, handle.reply.headers, handle.reply.body) == (
        401,
        {"www-authenticate": 'Bearer realm="tollway"'},
        why,
    )
    assert "x-tollway-cluster" not in handle.header_values and handle.tollway == {}


@pytest.fixture(scope="module")
def limited_gateway() -> GatewayProgram:
    """The gateway where callers without a valid credential are limited per client address, and so are
    pro's."""
    tiers = {**DATA["tiers"], "pro": {**DATA["tiers"]["pro"], "per_address": "pro"}}
    return GatewayProgram({**DATA, "unauthenticated_scope": "_unauthenticated", "tiers": tiers}, NOW)


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({"authorization": "Bearer nope"}, "invalid API key or token"),
        (
            {**KEY, ":path": "/v1/models/chat/infer?api_key=k-pro"},
            "send credentials in the Authorization or x-api-key header, never in the URL",
        ),
        (
            {"x-api-key": "k-stolen"},
            "this API key is suspended (used from 40 networks (38 new to it) and 3 user agents in an hour); "
            "ask the API's operators to lift the suspension",
        ),
    ],
)
def test_a_caller_without_a_valid_credential_is_counted_per_address_before_its_401(
    limited_gateway: GatewayProgram, headers: dict[str, str], why: str
) -> None:
    handle = limited_gateway.request(headers, infer_body(), route=INFER)
    # The headers program leaves the answer to the body program: the address filter between them counts it.
    assert handle.after_headers == {"address_open": "_unauthenticated", "refused": why}
    assert handle.reply is not None
    assert (handle.reply.status, handle.reply.headers, handle.reply.body) == (
        401,
        {"www-authenticate": 'Bearer realm="tollway"'},
        why,
    )
    # routed nowhere (a cluster without endpoints), for the ratelimit filters' sake: answered before it
    assert handle.header_values["x-tollway-cluster"] == "refused"


def test_a_tier_limited_per_address_gives_its_requests_that_scope(limited_gateway: GatewayProgram) -> None:
    handle = limited_gateway.request(KEY, infer_body(), route=INFER)
    assert handle.reply is None and handle.tollway["address_closed"] == "pro"  # pro fails closed
    free = limited_gateway.request({"x-api-key": "k-free"}, infer_body(), route=INFER)
    assert free.reply is None and not {"address_open", "address_closed"} & set(free.tollway)


def test_a_key_of_a_customer_not_yet_verified_gets_403_saying_so(gateway: GatewayProgram) -> None:
    handle = gateway.request({"x-api-key": "k-unverified"}, infer_body(), route=INFER)
    assert handle.answer == (
        403,
        "this API key's account is not verified yet: tier pro serves verified customers only",
    )
    assert "x-tollway-cluster" not in handle.header_values


def test_a_suspended_key_gets_401_saying_why_and_how_it_is_lifted(gateway: GatewayProgram) -> None:
    handle = gateway.request({"x-api-key": "k-stolen"}, infer_body(), route=INFER)
    assert handle.answer == (
        401,
        "this API key is suspended (used from 40 networks (38 new to it) and 3 user agents in an hour); "
        "ask the API's operators to lift the suspension",
    )
    assert "x-tollway-cluster" not in handle.header_values and "signal_tier" not in handle.tollway


def test_a_tier_that_counts_key_signals_names_the_consumer_and_its_client_program() -> None:
    data = copy.deepcopy(DATA)
    data["tiers"]["pro"]["signals"] = True
    gateway = GatewayProgram(data, NOW)
    agent = {"user-agent": "OpenAI/Python 1.54.0 (linux)"}
    handle = gateway.request({**KEY, **agent}, infer_body(), route=INFER)
    assert handle.reply is None
    assert (handle.tollway["signal_tier"], handle.tollway["agent"]) == ("pro", "OpenAI/Python")
    free = gateway.request({"x-api-key": "k-free", **agent}, infer_body(), route=INFER)
    assert free.reply is None and "signal_tier" not in free.tollway and "agent" not in free.tollway


def test_a_worker_sends_a_callers_signals_once_an_hour_per_network_and_program() -> None:
    data = copy.deepcopy(DATA)
    data["tiers"]["pro"]["signals"] = True
    gateway = GatewayProgram(data, NOW)

    def signalled(agent: str, address: str = "198.51.100.7:4000", answer: dict[str, str] = ANSWERED) -> bool:
        headers = {**KEY, "user-agent": agent}
        handle = gateway.request(headers, infer_body(), route=INFER, remote_address=address)
        assert handle.reply is None
        gateway.response(answer, b"{}", metadata={"tollway": handle.tollway})
        return "signal_tier" in handle.tollway

    assert signalled("curl/8.5.0", answer={":status": "429"})  # refused before the stream-end filter
    assert signalled("curl/8.5.0")  # so sent again; now answered by the model: sent
    assert not signalled("curl/8.5.0")  # seen this hour: the ratelimit service would not count it again
    assert not signalled("curl/8.5.0", "198.51.100.200:4000")  # the same /24
    assert signalled("curl/8.5.0", "198.51.101.7:4000")  # another network
    assert signalled("python-requests/2.31")  # another program
    gateway.now = NOW - NOW % 3600 + 3600  # the next hour: counted again
    assert signalled("curl/8.5.0")


def test_a_workers_memory_of_sightings_is_bounded_and_never_hides_one_past_it() -> None:
    sightings = Module("access").sightings(2)
    seen, mark = sightings["seen"], sightings["mark"]
    assert not seen("a", 1)
    mark("a", 1)
    mark("b", 1)
    assert seen("a", 1) and seen("b", 1)
    mark("c", 1)
    assert not seen("c", 1)  # full: never hidden, sent every time
    assert not seen("a", 2)  # a new hour forgets


def test_a_new_keys_network_is_named_for_the_count_of_new_keys_per_network() -> None:
    data = copy.deepcopy(DATA)
    data["tiers"]["pro"]["signals"] = True
    data["new_key_seconds"] = 86_400
    data["credentials"]["k-new"] = {
        "id": "ai/new-key",
        "consumer": "fresh",
        "tier": "pro",
        "created": NOW - 3600,
    }
    data["credentials"]["k-day-old"] = {
        "id": "ai/day-old",
        "consumer": "old",
        "tier": "pro",
        "created": NOW - 86_400,
    }
    gateway = GatewayProgram(data, NOW)
    address = {"remote_address": "203.0.113.77:50123"}
    fresh = gateway.request({"x-api-key": "k-new"}, infer_body(), route=INFER, **address)
    assert fresh.reply is None and fresh.tollway["new_key_network"] == "203-0-113-0_24"
    for key in ("k-day-old", "k-pro"):  # a day old, or of no known age: not new
        handle = gateway.request({"x-api-key": key}, infer_body(), route=INFER, **address)
        assert handle.reply is None and "new_key_network" not in handle.tollway


@pytest.mark.parametrize(
    ("address", "network"),
    [
        ("203.0.113.77:50123", "203-0-113-0_24"),
        ("[2001:db8:AB::1]:443", "2001-db8-ab_48"),
        ("[2001:0db8:0000:0001::]:443", "2001-db8-0_48"),
        ("[::1]:443", "0-0-0_48"),
        ("[2001:db8::]:443", "2001-db8-0_48"),
        ("[fe80:1:2:3:4:5:6:7]:1", "fe80-1-2_48"),
        ("[::ffff:203.0.113.7]:1", None),  # IPv4-mapped: Envoy writes IPv4 clients as IPv4
        ("pipe:/run/envoy.sock", None),
        ("", None),
    ],
)
def test_a_client_network_is_its_24_or_48_in_a_form_without_dots(address: str, network: str | None) -> None:
    assert Module("access").network_of(address) == network


@pytest.mark.parametrize(
    ("header", "counted"),
    [
        (None, "none"),
        ("", "none"),
        ("curl/8.5.0", "curl/8.5.0"),
        ("python-requests/2.31.0 extra", "python-requests/2.31.0"),
        ("x" * 5000, "x" * 48),
        ("<script>alert(1)</script>", "none"),
        ("Mozilla/5.0\u0000evil", "Mozilla/5.0"),
    ],
)
def test_the_user_agent_counted_is_its_first_product_token_cut_short(
    header: str | None, counted: str
) -> None:
    assert Module("access").agent_product(header) == counted


def test_a_body_declared_larger_than_the_models_limit_gets_413_on_its_headers(
    gateway: GatewayProgram,
) -> None:
    handle = gateway.request({**KEY, "content-length": str(MAX_BODY + 1)}, b"{}", route=INFER)
    assert handle.answer == (413, f"a request to chat may carry at most {MAX_BODY} bytes")
    assert gateway.request({**KEY, "content-length": str(MAX_BODY)}, infer_body(), route=INFER).reply is None


def test_a_grpc_body_larger_than_its_models_limit_gets_413(gateway: GatewayProgram) -> None:
    request = service_pb2.ModelInferRequest(model_name="chat")
    request.raw_input_contents.append(b"x" * MAX_BODY)
    handle = gateway.request(GRPC_INFER, grpc_frame(request), route=GRPC)
    assert handle.answer == (413, f"a request to chat may carry at most {MAX_BODY} bytes")


def test_a_tier_gets_403_for_a_version_it_may_not_use(gateway: GatewayProgram) -> None:
    handle = gateway.request({"x-api-key": "k-free"}, route={**INFER, "version": 1})
    assert handle.answer == (403, "tier free may not use chat version 1")


def test_a_switched_off_version_gets_410_once_the_caller_is_known(gateway: GatewayProgram) -> None:
    handle = gateway.request(KEY, route={**INFER, "version": 0})
    assert handle.answer == (410, "this model version was switched off on 2026-09-21")
    assert gateway.request({}, route={**INFER, "version": 0}).answer == (401, MISSING)  # says nothing of it


def test_a_request_that_could_never_fit_the_token_limit_gets_429(gateway: GatewayProgram) -> None:
    handle = gateway.request(KEY, infer_body(max_tokens=5000), route=INFER)
    reserve = math.ceil(len(infer_body(max_tokens=5000)) / 4) + 5000
    assert handle.answer == (
        429,
        f"the request reserves {reserve} tokens, more than the tier's limit of 2000",
    )
    assert "reserve" not in handle.tollway


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'{"parameters":{"max_tokens":"lots"}}', "parameters.max_tokens must be a whole number"),
        (b'{"parameters":{"max_tokens":1.5}}', "parameters.max_tokens must be a whole number"),
        (
            b'{"parameters":{"max_tok\\u0065ns":9}}',
            "escape sequences are not accepted in the keys of parameters",
        ),
        (
            b'{"p\\u0061rameters":{"max_tokens":9}}',
            "escape sequences are not accepted in the keys of the request",
        ),
        (
            b'{"parameters":{},"parameters":{"max_tokens":9}}',
            "parameters appears twice in the request",
        ),
        (
            b'{"parameters":{"max_tokens":1,"max_tokens":9}}',
            "max_tokens appears twice in parameters",
        ),
        (b'{"<\\"x":1,"<\\"x":2}', "escape sequences are not accepted in the keys of the request"),
        (b'{"<x>":1,"<x>":2}', "a key appears twice in the request"),  # not echoed into the JSON reply
        (b'{"parameters":null}', "parameters must be a JSON object"),
        (b'{"parameters":{"max_tokens":9}', "the request body is not a JSON object"),
        (b'{"inputs":[]} {"parameters":{"max_tokens":9}}', "the request body holds more than one JSON value"),
        (b'[{"parameters":{"max_tokens":9}}]', "the request body is not a JSON object"),
    ],
)
def test_unreadable_parameters_get_400(gateway: GatewayProgram, body: bytes, why: str) -> None:
    handle = gateway.request(KEY, body, route=INFER)
    assert handle.answer == (400, why)
    assert handle.body_bytes == body


def test_the_tier_priority_replaces_the_clients_and_the_other_parameters_pass_as_sent(
    gateway: GatewayProgram,
) -> None:
    body = (
        b'{"id": "parameters", "parameters": {"priority": 1, "x": [1, "}"], "max_tokens": 7}, "inputs": []}'
    )
    handle = gateway.request(KEY, body, route=INFER)
    assert handle.reply is None
    assert (
        handle.body_bytes
        == b'{"id": "parameters", "parameters": {"priority":2,"x": [1, "}"],"max_tokens": 7}, "inputs": []}'
    )


@pytest.mark.parametrize(
    ("outputs", "forwarded"),
    [
        ([{"name": "OUTPUT"}], [{"name": "OUTPUT"}, {"name": "USAGE"}]),  # the usage output comes back anyway
        ([{"name": "USAGE"}, {"name": "OUTPUT"}], [{"name": "USAGE"}, {"name": "OUTPUT"}]),
        ([], []),  # no list: Triton returns every output
    ],
)
def test_an_outputs_list_always_asks_for_the_usage_output(
    gateway: GatewayProgram, outputs: list[dict[str, str]], forwarded: list[dict[str, str]]
) -> None:
    handle = gateway.request(KEY, json.dumps({"inputs": [], "outputs": outputs}).encode(), route=INFER)
    assert handle.reply is None
    assert json.loads(handle.body_bytes or b"")["outputs"] == forwarded


@pytest.mark.parametrize(
    ("outputs", "why"),
    [
        ('{"name": "OUTPUT"}', "outputs must be a JSON array"),
        ('["OUTPUT"]', "each output must be a JSON object"),
        ('[{"name": "US\\u0041GE"}]', "an output name must be a string without escape sequences"),
        ('[{"name": "OUTPUT", "name": "USAGE"}]', "name appears twice in an output"),
        ('[{"name": "USAGE", "parameters": {"classification": 1}}]', "the output USAGE takes no parameters"),
    ],
)
def test_an_outputs_list_read_two_ways_gets_400(gateway: GatewayProgram, outputs: str, why: str) -> None:
    handle = gateway.request(KEY, f'{{"inputs": [], "outputs": {outputs}}}'.encode(), route=INFER)
    assert handle.answer == (400, why)


@pytest.mark.parametrize("declared", ["x", "-1", "99999"])
def test_a_binary_body_with_an_unreadable_json_length_gets_400(
    gateway: GatewayProgram, declared: str
) -> None:
    body = b'{"inputs":[]}' + b"\x00" * 8
    handle = gateway.request({**KEY, "inference-header-content-length": declared}, body, route=INFER)
    assert handle.answer == (
        400,
        "Inference-Header-Content-Length must be a whole number no larger than the body",
    )


@pytest.mark.parametrize("query", ["api_key=k-pro", "x=1&API%5FKEY=k-pro", "Token=abc", "key"])
def test_a_credential_in_the_url_gets_401(gateway: GatewayProgram, query: str) -> None:
    handle = gateway.request({**KEY, ":path": f"/v1/models/chat/infer?{query}"}, infer_body(), route=INFER)
    assert handle.answer == (
        401,
        "send credentials in the Authorization or x-api-key header, never in the URL",
    )


def test_an_innocent_query_and_a_clients_internal_headers_pass_without_them(gateway: GatewayProgram) -> None:
    sent = {**KEY, ":path": "/v1/models/chat/infer?keys=3&monkey=1", "x-envoy-original-path": "/forged"}
    handle = gateway.request(sent, infer_body(), route=INFER)
    assert handle.reply is None
    assert "x-envoy-original-path" not in handle.header_values


def test_a_compressed_body_gets_415(gateway: GatewayProgram) -> None:
    handle = gateway.request({**KEY, "content-encoding": "gzip"}, b"\x1f\x8b", route=INFER)
    assert handle.answer == (415, "send the request body uncompressed") and handle.tollway == {}


def test_a_failure_inside_the_program_is_logged_and_answered_500(gateway: GatewayProgram) -> None:
    handle = gateway.request(KEY, route={**INFER, "model": "unknown"})
    assert handle.answer == (500, "the gateway could not process this request")
    assert len(handle.errors) == 1 and handle.errors[0].startswith("tollway gateway: ")


# Other credentials


def test_a_verified_jwt_with_the_scopes_names_a_prefixed_consumer(gateway: GatewayProgram) -> None:
    verified = {"envoy.filters.http.jwt_authn": {"partners": {"sub": "team-7", "scope": "read infer"}}}
    handle = gateway.request({}, infer_body(), route=INFER, metadata=verified)
    assert handle.reply is None
    assert handle.header_values["x-tollway-cluster"] == "triton-http|chat|partners"
    assert (handle.tollway["consumer"], handle.tollway["tier"]) == ("jwt:team-7", "partners")
    assert "credential" not in handle.tollway


def test_a_jwt_without_the_scopes_gets_401_even_with_a_key(gateway: GatewayProgram) -> None:
    verified = {"envoy.filters.http.jwt_authn": {"partners": {"sub": "team-7", "scp": ["read"]}}}
    handle = gateway.request(KEY, infer_body(), route=INFER, metadata=verified)
    assert handle.answer == (401, "token lacks a required scope")


@pytest.mark.parametrize("claim", [["team-7", "team-8"], {"team": 7}, "", True])
def test_a_jwt_whose_consumer_claim_is_no_string_or_number_gets_401(
    gateway: GatewayProgram, claim: Any
) -> None:
    """An array or object would become a new consumer on every request, escaping per-consumer limits."""
    verified = {"envoy.filters.http.jwt_authn": {"partners": {"sub": claim, "scope": "read infer"}}}
    handle = gateway.request(KEY, infer_body(), route=INFER, metadata=verified)
    assert handle.answer == (401, "the token's consumer claim must be a string or a number")


def test_a_jwt_with_a_numeric_consumer_claim_names_that_consumer(gateway: GatewayProgram) -> None:
    verified = {"envoy.filters.http.jwt_authn": {"partners": {"sub": 1234, "scope": "read infer"}}}
    handle = gateway.request({}, infer_body(), route=INFER, metadata=verified)
    assert handle.reply is None and handle.tollway["consumer"] == "jwt:1234"


def test_a_client_certificate_on_its_tiers_port_names_a_prefixed_consumer(gateway: GatewayProgram) -> None:
    certificate = Certificate(uri_sans=["spiffe://ai/devices/cam-1"])
    handle = gateway.request(
        {}, infer_body(), route=INFER, certificate=certificate, local_address="10.0.0.1:8443"
    )
    assert handle.reply is None
    assert (handle.tollway["consumer"], handle.tollway["tier"]) == (
        "cert:spiffe://ai/devices/cam-1",
        "devices",
    )


def test_a_certificates_consumer_is_the_san_its_tier_allowed_not_its_first(gateway: GatewayProgram) -> None:
    certificate = Certificate(uri_sans=["spiffe://elsewhere/x", "spiffe://ai/devices/cam-2"])
    handle = gateway.request(
        {}, infer_body(), route=INFER, certificate=certificate, local_address="10.0.0.1:8443"
    )
    assert handle.tollway["consumer"] == "cert:spiffe://ai/devices/cam-2"


@pytest.mark.parametrize(
    ("pattern", "san", "matches"),
    [
        ("spiffe://partners.test/*", "spiffe://partners.test/team-a", True),
        ("spiffe://partners.test/*", "spiffe://partners.test.evil/team-a", False),
        ("spiffe://partners.test/*", "spiffe://partners.test/", False),
        ("spiffe://partners.test*", "spiffe://partners.test/team-a", True),
        ("spiffe://partners.test*", "spiffe://partners.test", True),
        ("spiffe://partners.test*", "spiffe://partners.test.evil/team-a", False),
        ("spiffe://partners.test/team-a", "spiffe://partners.test/team-a", True),
        ("spiffe://partners.test/team-a", "spiffe://partners.test/team-ab", False),
    ],
)
def test_a_trailing_star_matches_whole_path_segments_only(pattern: str, san: str, matches: bool) -> None:
    assert Module("access").san_matches(lua_text(pattern.encode()), lua_text(san.encode())) is matches


@pytest.mark.parametrize(
    ("certificate", "address", "why"),
    [
        (
            Certificate(uri_sans=["spiffe://ai/devices/a"]),
            "10.0.0.1:8080",
            "no valid client certificate for this port",
        ),
        (Certificate(validated=False), "10.0.0.1:8443", "no valid client certificate for this port"),
        (
            Certificate(dns_sans=["evil.example"]),
            "10.0.0.1:8443",
            "client certificate not allowed for tier devices",
        ),
    ],
)
def test_a_client_certificate_that_does_not_fit_gets_401(
    gateway: GatewayProgram, certificate: Certificate, address: str, why: str
) -> None:
    handle = gateway.request({}, route=INFER, certificate=certificate, local_address=address)
    assert handle.answer == (401, why)


# gRPC


def test_a_grpc_infer_request_is_routed_by_its_model_name_and_charged(gateway: GatewayProgram) -> None:
    request = service_pb2.ModelInferRequest(model_name="chat:stable", id="r1")
    request.parameters["max_tokens"].int64_param = 300
    request.parameters["priority"].uint64_param = 1  # the tier's level comes after it, and wins
    request.raw_input_contents.append(b"\x00\xff")
    frame = grpc_frame(request)
    handle = gateway.request(GRPC_INFER, frame, route=GRPC)
    assert handle.reply is None
    forwarded = grpc_message(handle.body_bytes or b"")
    assert (forwarded.model_name, forwarded.model_version, forwarded.id) == ("chat", "1", "r1")
    assert forwarded.parameters["priority"].uint64_param == 2
    assert forwarded.parameters["max_tokens"].int64_param == 300
    assert list(forwarded.raw_input_contents) == [b"\x00\xff"]
    assert handle.header_values == {
        ":path": "/inference.GRPCInferenceService/ModelInfer",
        "x-tollway-cluster": "triton-grpc|chat",
    }
    assert handle.tollway["version"] == "1"
    assert handle.tollway["reserve"] == str(math.ceil(len(frame) / 4) + 300)
    # The model is inside the body: the headers give the caller only, and the request limits are counted
    # by the filters after the body program (their metadata keys say so).
    assert handle.after_headers == {
        "kind": "grpc",
        "consumer": "acme",
        "tier": "pro",
        "counter_consumer": "acme",
        "counter_tier": "pro",
        "credential": "ai/pro-key",
    }
    assert (handle.tollway["rpm_grpc_closed"], handle.tollway["tpm_closed"]) == ("pro", "pro/chat")
    assert "rpm_closed" not in handle.tollway


def test_a_grpc_caller_without_a_credential_is_refused_before_its_body_is_read(
    gateway: GatewayProgram,
) -> None:
    frame = grpc_frame(service_pb2.ModelInferRequest(model_name="chat"))
    handle = gateway.request({":path": GRPC_INFER[":path"]}, frame, route=GRPC)
    assert handle.answer == (401, MISSING)  # the harness fails any test whose headers program reads a body


@pytest.mark.parametrize(
    ("requested", "forwarded"),
    [
        (["OUTPUT"], ["OUTPUT", "USAGE"]),
        (["USAGE", "OUTPUT"], ["USAGE", "OUTPUT"]),
        ([], []),  # none requested: Triton returns every output
    ],
)
def test_a_grpc_request_for_some_outputs_always_asks_for_the_usage_output(
    gateway: GatewayProgram, requested: list[str], forwarded: list[str]
) -> None:
    request = service_pb2.ModelInferRequest(model_name="chat")
    for name in requested:
        request.outputs.add(name=name)
    handle = gateway.request(GRPC_INFER, grpc_frame(request), route=GRPC)
    assert handle.reply is None
    assert [output.name for output in grpc_message(handle.body_bytes or b"").outputs] == forwarded


def test_grpc_and_http_reserve_by_the_same_formula(gateway: GatewayProgram) -> None:
    frame = grpc_frame(service_pb2.ModelInferRequest(model_name="chat"))
    body = infer_body()
    over_grpc = gateway.request(GRPC_INFER, frame, route=GRPC)
    over_http = gateway.request(KEY, body, route=INFER)
    assert over_grpc.tollway["reserve"] == str(math.ceil(len(frame) / 4) + 256)
    assert over_http.tollway["reserve"] == str(math.ceil(len(body) / 4) + 256)


def test_a_grpc_model_request_other_than_infer_is_routed_unlimited(gateway: GatewayProgram) -> None:
    message = service_pb2.ModelInferRequest(model_name="chat", model_version="1").SerializeToString()
    frame = b"\0" + len(message).to_bytes(4, "big") + message
    headers = {":path": "/inference.GRPCInferenceService/ModelReady", "x-api-key": "k-pro"}
    handle = gateway.request(headers, frame, route=GRPC)
    assert handle.reply is None and handle.body_bytes == frame
    assert "rpm_closed" not in handle.tollway and "reserve" not in handle.tollway


def test_grpc_server_methods_go_to_the_server_cluster(gateway: GatewayProgram) -> None:
    handle = gateway.request(
        {":path": "/inference.GRPCInferenceService/ServerLive"}, b"\0\0\0\0\0", route=GRPC
    )
    assert handle.reply is None and handle.header_values["x-tollway-cluster"] == "triton-grpc|chat"
    assert handle.tollway == {"kind": "grpc"}  # no caller; the body program reads it (the route bounds it)
    empty = GatewayProgram({**DATA, "server_cluster": None}, NOW)
    handle = empty.request({":path": "/inference.GRPCInferenceService/ServerReady"}, route=GRPC)
    assert handle.answer == (503, "no model is served here yet")


@pytest.mark.parametrize(
    ("path", "body", "status", "why"),
    [
        (
            "/inference.GRPCInferenceService/RepositoryIndex",
            b"",
            403,
            "the gateway does not offer RepositoryIndex",
        ),
        ("/other.Service/ModelInfer", b"", 403, "the gateway does not offer nil"),
        (
            "/inference.GRPCInferenceService/ModelInfer",
            b"\x01\0\0\0\0",
            400,
            "send one uncompressed gRPC message",
        ),
        ("/inference.GRPCInferenceService/ModelInfer", b"\0\0\0", 400, "send one uncompressed gRPC message"),
        (
            "/inference.GRPCInferenceService/ModelInfer",
            b"\0\0\0\0\x02\x0a\x09",
            400,
            "the request is not a protobuf message",
        ),
        ("/inference.GRPCInferenceService/ModelInfer", b"\0\0\0\0\x04\x0a\x02no", 404, "no model no"),
        (
            "/inference.GRPCInferenceService/ModelInfer",
            b"\0\0\0\0\x08\x0a\x06chat:x",
            404,
            "model chat has no version or alias x",
        ),
        (
            "/inference.GRPCInferenceService/ModelInfer",
            b"\0\0\0\0\x14\x0a\x04chat\x22\x0c\x0a\x0amax_tokens",
            400,
            "parameters.max_tokens must be a whole number",
        ),
        (  # field 1 + 2^32: Triton's C++ protobuf keeps a tag's low 32 bits and reads a second model_version
            "/inference.GRPCInferenceService/ModelInfer",
            b"\0\0\0\0\x0d\x0a\x04chat\x92\x80\x80\x80\x10\x01\x31",
            400,
            "the request is not a protobuf message",
        ),
        (  # the usage output asked for with parameters: a classification would keep its text out
            "/inference.GRPCInferenceService/ModelInfer",
            b"\0\0\0\0\x12\x0a\x04chat\x32\x0a\x0a\x05USAGE\x12\x01\x00",
            400,
            "the output USAGE takes no parameters",
        ),
    ],
)
def test_grpc_requests_the_gateway_cannot_serve_are_answered(
    gateway: GatewayProgram, path: str, body: bytes, status: int, why: str
) -> None:
    handle = gateway.request({":path": path, "x-api-key": "k-pro"}, body, route=GRPC)
    assert handle.answer == (status, why)


# Responses


def test_a_response_settles_the_tokens_used_beyond_the_reservation(gateway: GatewayProgram) -> None:
    state = {"tollway": {"tier": "pro", "model": "chat", "version": "2", "reserve": "100"}}
    body = b'{"outputs":[{"data":["{\\"prompt_tokens\\": 30, \\"completion_tokens\\": 90}"]}]}'
    headers = {
        **ANSWERED,
        "x-ratelimit-remaining-tokens": "500, 500;w=60",
        "x-ratelimit-limit": "60, 60;w=60",
    }
    handle = gateway.response(headers, body, metadata=state)
    counted = {"input_tokens": "30", "output_tokens": "90", "settle": "20"}
    assert handle.tollway == {**state["tollway"], **NOTHING_COUNTED, **counted}
    assert handle.header_values == {
        **ANSWERED,
        "x-ratelimit-remaining-tokens": "480",
        "x-ratelimit-limit": "60",
    }


def test_a_response_within_the_reservation_settles_nothing_and_one_without_counts_records_none(
    gateway: GatewayProgram,
) -> None:
    state = {"tollway": {"tier": "pro", "model": "chat", "version": "2", "reserve": "500"}}
    handle = gateway.response(ANSWERED, b'{"prompt_tokens":3}', metadata=state)
    assert handle.tollway == {**state["tollway"], **NOTHING_COUNTED, "input_tokens": "3"}  # no settle call
    handle = gateway.response(ANSWERED, b'{"outputs":[]}', metadata=state)
    assert handle.tollway == {**state["tollway"], **NOTHING_COUNTED}


def test_what_a_model_answered_a_caller_is_marked_for_the_usage_logger_and_a_refusal_is_not(
    gateway: GatewayProgram,
) -> None:
    state = {"tollway": {"tier": "pro", "consumer": "acme", "model": "chat", "version": "2"}}
    answered = {":status": "400", "x-envoy-upstream-service-time": "3"}  # Triton's own refusal is counted
    handle = gateway.response(answered, b'{"error":"bad input"}', metadata=state)
    assert handle.tollway == {**state["tollway"], **NOTHING_COUNTED}  # it reads a number for each
    refused = gateway.response({":status": "429"}, b"", metadata=state)  # the gateway's own answer
    assert refused.tollway == state["tollway"]
    anonymous = gateway.response(answered, b"", metadata={"tollway": {"model": "chat"}})  # no caller
    assert anonymous.tollway == {"model": "chat"}


def test_a_served_response_without_usage_is_charged_its_estimate_and_flagged(gateway: GatewayProgram) -> None:
    state = {
        "tollway": {
            "tier": "pro",
            "counter_tier": "pro",
            "model": "chat",
            "version": "2",
            "reserve": "500",
            "estimate": "520",
        }
    }
    handle = gateway.response(
        {**ANSWERED, "x-ratelimit-remaining-tokens": "100"}, b'{"outputs":[]}', metadata=state
    )
    assert handle.tollway == {
        **state["tollway"],
        "from_model": "1",
        "input_tokens": "0",
        "output_tokens": "520",  # leaving the usage out never costs less than the request could have used
        "unreported": "1",  # counted by the usage_unreported counter, for its alert
        "settle": "20",
    }
    assert handle.header_values["x-ratelimit-remaining-tokens"] == "80"


@pytest.mark.parametrize(("headers", "body"), [({**ANSWERED, "grpc-status": "3"}, b"\x00"), (ANSWERED, b"")])
def test_a_grpc_error_or_an_empty_response_is_charged_nothing_more(
    gateway: GatewayProgram, headers: dict[str, str], body: bytes
) -> None:
    state = {"tollway": {"tier": "pro", "model": "chat", "version": "2", "reserve": "500", "estimate": "520"}}
    assert gateway.response(headers, body, metadata=state).tollway == {**state["tollway"], **NOTHING_COUNTED}


def test_an_answer_is_marked_for_the_usage_logger_only_once_it_is_read(gateway: GatewayProgram) -> None:
    """A caller who leaves while the answer's body is still coming is counted as one who left (its
    estimate, by the other usage logger), not as one answered with nothing."""
    state = {"tollway": {"tier": "pro", "model": "chat", "version": "2", "estimate": "520"}}
    handle = gateway.response(ANSWERED, b'{"prompt_tokens":3}', metadata=state)
    written = list(handle.tollway)  # in the order the program first set each key
    assert written[-1] == "from_model" and handle.tollway["input_tokens"] == "3"


def test_responses_of_a_deprecated_version_announce_it(gateway: GatewayProgram) -> None:
    state = {"tollway": {"tier": "pro", "model": "chat", "version": "1"}}
    handle = gateway.response({":status": "200"}, b"{}", metadata=state)
    assert handle.header_values == {
        ":status": "200",
        "deprecation": f"@{NOW - 60}",
        "sunset": "Wed, 23 Sep 2026 00:00:00 GMT",
        "link": '<https://docs.example.com/chat-v2>; rel="deprecation"',
    }


@pytest.mark.parametrize(
    ("headers", "state", "retry_after"),
    [
        (
            {":status": "429", "x-ratelimit-reset": "12", "x-ratelimit-reset-tokens": "30"},
            {"tier": "pro"},
            "30",
        ),
        ({":status": "429"}, {}, "1"),  # the request limit refused it before the gateway saw it
        ({":status": "429", "x-ratelimit-reset": "12"}, {"tier": "free"}, None),  # a tier that says none
        ({":status": "503", "x-envoy-upstream-service-time": "3"}, {"model": "chat"}, "7"),
        ({":status": "503"}, {"model": "chat"}, None),  # Envoy's own 503: no upstream answered
    ],
)
def test_refusals_say_when_to_retry(
    gateway: GatewayProgram, headers: dict[str, str], state: dict[str, str], retry_after: str | None
) -> None:
    handle = gateway.response(headers, metadata={"tollway": state})
    assert handle.header_values.get("retry-after") == retry_after


def test_a_failure_in_the_response_program_is_logged_and_the_response_passes(gateway: GatewayProgram) -> None:
    handle = gateway.response({":status": "200"}, metadata={"tollway": {"model": "chat", "version": "x"}})
    assert handle.errors == [] and handle.header_values == {":status": "200"}
    state = {"tollway": {"tier": "pro", "model": "chat", "reserve": "x"}}
    broken = gateway.response(ANSWERED, b'{"prompt_tokens":3}', metadata=state)
    assert len(broken.errors) == 1 and broken.errors[0].startswith("tollway gateway (response): ")


def test_the_clock_is_read_once_by_each_program_on_a_request_and_once_per_response() -> None:
    gateway = GatewayProgram(DATA, NOW)
    reads = []
    gateway.lua.globals().os.time = lambda: reads.append(1) or NOW
    gateway.request(KEY, infer_body(), route=INFER)
    assert len(reads) == 2
    gateway.response({":status": "200"}, b"{}", metadata={"tollway": {"model": "chat", "version": "1"}})
    assert len(reads) == 3


def test_a_refusal_repeats_a_name_the_client_sent_only_when_it_is_plain() -> None:
    models = Module("models")
    refused = [
        models.resolve(DATA["models"], name, alias, None)[3]
        for name, alias in (("chat\r\nx-evil: 1", "latest"), ("nope", "latest"), ("chat", 'st"able'))
    ]
    assert refused == [
        "no model (a name with other characters)",
        "no model nope",
        "model chat has no version or alias (a name with other characters)",
    ]


def test_the_reservation_is_one_function_of_size_and_max_tokens() -> None:
    tokens = Module("tokens")
    model = {"input": "prompt_tokens", "max_tokens": 256}
    pro = DATA["tiers"]["pro"]
    assert tokens.reservation(pro, "chat", model, {"tpm": "pro"}, 9, None) == 3 + 256
    assert tokens.reservation(pro, "chat", model, {"tpd": "pro"}, 8, 10) == 2 + 10
    assert tokens.reservation(pro, "chat", model, {"rpm": "pro"}, 8, 10) is None
    assert tokens.reservation(pro, "chat", {"max_tokens": 256}, {"tpm": "pro"}, 8, 10) is None
    assert tokens.reservation(pro, "chat", model, {"tpm": "pro"}, 8, 1999) == (
        False,
        "the request reserves 2001 tokens, more than the tier's limit of 2000",
    )


def test_the_program_rendered_from_resources_runs() -> None:
    moment = datetime.fromtimestamp(NOW, UTC)
    secret = {
        "kind": "Secret",
        "metadata": {"name": "pro-key", "labels": {"tollway.dev/tier": "pro"}},
        "data": {"api-key": "ay1wcm8="},  # k-pro
    }
    plan = plan_gateway(
        "ai",
        tiers=[parse(ApiTier, api_tier())],
        models=[parse(ModelDeployment, model_deployment())],
        secrets=[secret],
        now=moment,
    )
    assert plan.gateway is not None
    handle = GatewayProgram(lua_data(plan.gateway), NOW).request(KEY, infer_body(), route=INFER)
    assert handle.errors == []
    assert handle.reply is None
    assert handle.tollway["consumer"] == "pro-key" and handle.tollway["tier"] == "pro"
