"""Properties of the gateway's readers on generated inputs, hostile ones included: the JSON scanner (json.lua)
against Python's json module, the protobuf readers (protobuf.lua) against tritonclient's generated
ModelInferRequest. Where the Lua refuses a request (an error it turns into a 400), that is always allowed."""

from __future__ import annotations

import json
import os
import struct
import urllib.parse
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lua_gateway import Module, from_lua, lua_text
from tritonclient.grpc import service_pb2

from tollway.ir.names import counter_name

JSON = Module("json")
PROTOBUF = Module("protobuf")
LUA_EXACT = 2**53  # LuaJIT's numbers are doubles: whole numbers are exact up to here
# LUA_PROPERTY_EXAMPLES=2000 searches harder (a few minutes) than the default run.
FAST = settings(
    max_examples=int(os.environ.get("LUA_PROPERTY_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# JSON documents with duplicate keys, as a list of (key, value) pairs per object.

WORDS = st.sampled_from(["parameters", "max_tokens", "priority", "inputs", "data", "id", "p"])
keys = WORDS | st.text(max_size=8)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=False, allow_infinity=False)
    | keys
)


class Pairs(list[tuple[str, Any]]):
    """A JSON object that may repeat a key."""


def objects(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Pairs]:
    return st.lists(st.tuples(keys, values), max_size=5).map(Pairs)


values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | objects(inner), max_leaves=12)
plain_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)


def escaped(text: str, everything: bool) -> str:
    """A JSON string literal; with `everything`, each character as a \\u escape."""
    if everything:
        return (
            '"' + "".join(f"\\u{ord(char):04x}" for char in text) + '"'
            if text.isascii()
            else json.dumps(text)
        )
    return json.dumps(text, ensure_ascii=False)


# KServe-like bodies: "parameters" (often more than once) holding max_tokens (often more than once), and
# "outputs" naming the model's usage output or not.
USAGE = "USAGE"
parameter_objects = st.lists(st.tuples(WORDS, st.integers(0, 10**6) | values), max_size=4).map(Pairs)
output_objects = st.lists(
    st.tuples(st.sampled_from(["name", "parameters"]), st.sampled_from([USAGE, "OUTPUT"]) | values),
    max_size=3,
).map(Pairs)
members = (
    st.tuples(st.just("parameters"), parameter_objects | values)
    | st.tuples(st.just("outputs"), st.lists(output_objects, max_size=3) | values)
    | st.tuples(keys, values)
)


@st.composite
def documents(draw: st.DrawFn) -> str:
    """A KServe-like body: a top-level object whose keys (and strings) may be escaped, repeated, nested."""
    top = draw(st.lists(members, max_size=5).map(Pairs))
    spacing = draw(st.sampled_from(["", " ", "\n  "]))

    def encode(value: Any) -> str:
        if isinstance(value, Pairs):
            written = [f"{escaped(key, draw(st.booleans()))}:{spacing}{encode(item)}" for key, item in value]
            return "{" + ("," + spacing).join(written) + "}"
        if isinstance(value, list):
            return "[" + ",".join(encode(item) for item in value) + "]"
        if isinstance(value, str):
            return escaped(value, draw(st.booleans()))
        return json.dumps(value)

    return encode(top)


def pairs_hook(pairs: list[tuple[str, Any]]) -> Pairs:
    return Pairs(pairs)


def first(pairs: Pairs, key: str) -> Any:
    return next((value for name, value in pairs if name == key), None)


def single(pairs: Pairs, key: str) -> bool:
    return sum(1 for name, _ in pairs if name == key) == 1


def rewrite(text: str, level: int = 3) -> tuple[str | None, int | None, str | None]:
    """json.routed's three results, on a body given as text (UTF-8 on the wire), for a model whose usage
    output is USAGE."""
    done = JSON.routed(lua_text(text.encode()), level, USAGE)
    done = done if isinstance(done, tuple) else (done,)
    rewritten, max_tokens, problem = (*done, None, None, None)[:3]
    return (None if rewritten is None else from_lua(rewritten).decode()), max_tokens, problem


def check_rewrite(text: str) -> None:
    """The property: the gateway refuses the body, or it reads it exactly as every reader of the JSON does
    (so the body has one "parameters", one "max_tokens" in it, and keys without escapes), forwards the other
    members as sent, puts the tier's priority in place of any the client sent, and adds the usage output to
    an outputs list that leaves it out."""
    rewritten, max_tokens, problem = rewrite(text)
    if problem is not None:
        assert rewritten is None
        return
    assert rewritten is not None
    try:
        sent = json.loads(text, object_pairs_hook=pairs_hook)
    except ValueError:
        return  # Triton refuses it too
    assert isinstance(sent, Pairs), "only an object is read"
    assert all(single(sent, name) for name, _ in sent), "duplicate keys are refused"
    forwarded = json.loads(rewritten, object_pairs_hook=pairs_hook)
    assert [member for member in forwarded if member[0] not in ("parameters", "outputs")] == [
        member for member in sent if member[0] not in ("parameters", "outputs")
    ]
    listed = first(sent, "outputs")
    if listed is not None:
        assert isinstance(listed, list) and all(isinstance(output, Pairs) for output in listed)
        names = [first(output, "name") for output in listed]
        added = [Pairs([("name", USAGE)])] if listed and USAGE not in names else []
        assert first(forwarded, "outputs") == [*listed, *added]
    taken = first(forwarded, "parameters")
    given = first(sent, "parameters") or Pairs()
    assert isinstance(taken, Pairs) and isinstance(given, Pairs)
    assert all(single(given, name) for name, _ in given), "duplicate keys are refused"
    assert taken == [("priority", 3), *[member for member in given if member[0] != "priority"]]
    asked = first(given, "max_tokens")
    if asked is None:
        assert max_tokens is None
        return
    assert isinstance(asked, int) and not isinstance(asked, bool), "only a whole number is read"
    assert max_tokens == asked if asked < LUA_EXACT else max_tokens >= LUA_EXACT


@FAST
@given(documents())
def test_json_bodies_are_read_as_json_reads_them_or_refused(text: str) -> None:
    check_rewrite(text)


@FAST
@given(documents(), st.data())
def test_truncated_json_bodies_never_break_the_scanner(text: str, data: st.DataObject) -> None:
    check_rewrite(text[: data.draw(st.integers(min_value=0, max_value=len(text)))])


# Keys JSON writes without an escape (the gateway refuses escaped keys where it reads them).
plain_keys = keys.filter(lambda key: json.dumps(key, ensure_ascii=False) == f'"{key}"')


@FAST
@given(st.dictionaries(plain_keys, plain_values, max_size=5))
def test_the_parameters_span_is_the_parameters_object(parameters: dict[str, Any]) -> None:
    document = {"inputs": [{"parameters": {"x": 1}}], "parameters": parameters, "id": "}"}
    text = json.dumps(document, ensure_ascii=False)
    read = JSON.request(lua_text(text.encode()))
    start, stop = read.parameters.value_start, read.parameters.value_stop
    assert json.loads(text.encode()[start - 1 : stop - 1]) == parameters


# Bodies the JSON property found that the gateway once read differently from JSON (issue #12): each let a
# client ask for more max_tokens than the gateway reserved or, with the escaped key first, set its own
# priority (Triton reads the first of duplicate keys). Each is now refused.
MISREAD_BODIES = {
    "an escaped parameters key first": (
        '{"p\\u0061rameters":{"priority":1,"max_tokens":100000},"parameters":{}}'
    ),
    "an escaped parameters key alone": '{"p\\u0061rameters":{"max_tokens":100000}}',
    "two parameters keys": '{"parameters":{},"parameters":{"max_tokens":100000}}',
    "a parameters key whose value is not an object, then a second one": (
        '{"parameters":null,"parameters":{"max_tokens":100000}}'
    ),
}


@pytest.mark.parametrize("text", MISREAD_BODIES.values(), ids=list(MISREAD_BODIES))
def test_bodies_once_misread_are_refused(text: str) -> None:
    rewritten, _, problem = rewrite(text)
    assert rewritten is None and problem is not None


def test_a_string_value_equal_to_parameters_is_no_key() -> None:
    text = '{"id":"parameters","parameters":{"max_tokens":100000}}'
    check_rewrite(text)
    assert rewrite(text)[1] == 100000


# Protobuf: ModelInferRequest messages from tritonclient's generated classes, and hand-made wire bytes.


def infer_parameter(choice: tuple[str, Any]) -> service_pb2.InferParameter:
    parameter = service_pb2.InferParameter()
    setattr(parameter, *choice)
    return parameter


choices = st.one_of(
    st.tuples(st.just("bool_param"), st.booleans()),
    st.tuples(st.just("int64_param"), st.integers(min_value=-(2**63), max_value=2**63 - 1)),
    st.tuples(st.just("uint64_param"), st.integers(min_value=0, max_value=2**64 - 1)),
    st.tuples(st.just("double_param"), st.floats(allow_nan=False)),
    st.tuples(st.just("string_param"), st.text(max_size=6) | st.integers(0, 10**6).map(str)),
)


@st.composite
def infer_requests(draw: st.DrawFn) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(
        model_name=draw(st.text(max_size=12)),
        model_version=draw(st.text(max_size=3)),
        id=draw(st.text(max_size=4)),
    )
    for key, choice in draw(st.dictionaries(WORDS | st.text(max_size=4), choices, max_size=4)).items():
        request.parameters[key].CopyFrom(infer_parameter(choice))
    for name in draw(st.lists(st.text(max_size=4), max_size=2)):
        request.inputs.add(name=name, datatype="BYTES", shape=[1])
    request.raw_input_contents.extend(draw(st.lists(st.binary(max_size=8), max_size=2)))
    return request


def wire(message: bytes) -> str:
    return lua_text(message)


def whole_number(parameter: service_pb2.InferParameter) -> int | None:
    """The max_tokens a backend may read from an InferParameter, or None when it is not a whole number."""
    kind = parameter.WhichOneof("parameter_choice")
    if kind in ("int64_param", "uint64_param"):
        return int(getattr(parameter, kind))
    if kind == "string_param" and parameter.string_param.isdigit() and parameter.string_param.isascii():
        return int(parameter.string_param)
    return None


def check_request(message: bytes) -> None:
    """The property: the gateway refuses the message, or reads its name, version and max_tokens as protobuf
    does, counting at least the max_tokens a backend would act on."""
    read = PROTOBUF.name_and_version(wire(message))
    try:
        parsed = service_pb2.ModelInferRequest.FromString(message)
    except Exception:  # protobuf's DecodeError and friends: Triton refuses it too
        return
    if read is None:
        return  # refused: "the request is not a protobuf message"
    name, version, rest = read
    assert (from_lua(name), from_lua(version)) == (parsed.model_name.encode(), parsed.model_version.encode())
    without = service_pb2.ModelInferRequest()
    without.CopyFrom(parsed)
    without.ClearField("model_name")
    without.ClearField("model_version")
    assert service_pb2.ModelInferRequest.FromString(from_lua(rest)) == without
    counted = PROTOBUF.grpc_max_tokens(rest)
    if isinstance(counted, tuple):
        return  # refused: "parameters.max_tokens must be a whole number"
    if "max_tokens" not in parsed.parameters:
        assert counted is None
        return
    asked = whole_number(parsed.parameters["max_tokens"])
    assert asked is not None, "a max_tokens that is no whole number must be refused"
    assert counted == asked if asked < LUA_EXACT else counted >= LUA_EXACT, (asked, counted)


@FAST
@given(infer_requests())
def test_infer_requests_are_read_as_protobuf_reads_them(request: service_pb2.ModelInferRequest) -> None:
    check_request(request.SerializeToString())


@FAST
@given(infer_requests(), st.integers(min_value=0, max_value=2**32))
def test_the_routed_request_names_the_version_and_the_tiers_priority_wins(
    request: service_pb2.ModelInferRequest, level: int
) -> None:
    _, _, rest = PROTOBUF.name_and_version(wire(request.SerializeToString()))
    routed = service_pb2.ModelInferRequest.FromString(
        from_lua(PROTOBUF.routed_request(lua_text(b"chat"), 7, rest, level))
    )
    expected = service_pb2.ModelInferRequest()
    expected.CopyFrom(request)
    expected.model_name, expected.model_version = "chat", "7"
    expected.parameters["priority"].CopyFrom(service_pb2.InferParameter(uint64_param=level))
    assert routed == expected


def field(number: int, wire_type: int, payload: bytes) -> bytes:
    key = encode(number * 8 + wire_type)
    return key + (encode(len(payload)) + payload if wire_type == 2 else payload)


def encode(value: int) -> bytes:
    return service_pb2.InferParameter(uint64_param=value).SerializeToString()[1:]


# Hand-made wire bytes: fields repeated, several oneof members in one InferParameter, entries repeated.
raw_choices = st.one_of(
    st.tuples(st.just(1), st.just(0), st.sampled_from([b"\x00", b"\x01"])),
    st.tuples(st.just(2), st.just(0), st.integers(0, 2**64 - 1).map(encode)),
    st.tuples(st.just(5), st.just(0), st.integers(0, 2**64 - 1).map(encode)),
    st.tuples(st.just(3), st.just(2), st.sampled_from([b"12", b"x", b"", b"007"])),
    st.tuples(st.just(4), st.just(1), st.binary(min_size=8, max_size=8)),
)
raw_parameters = st.lists(raw_choices, max_size=3).map(
    lambda parts: b"".join(field(number, kind, payload) for number, kind, payload in parts)
)
raw_entries = st.tuples(st.sampled_from([b"max_tokens", b"priority", b"t"]), raw_parameters).map(
    lambda entry: field(4, 2, field(1, 2, entry[0]) + field(2, 2, entry[1]))
)
raw_fields = st.one_of(
    raw_entries,
    st.sampled_from([b"chat", b"chat:stable", b"\xff"]).map(lambda name: field(1, 2, name)),
    st.sampled_from([b"", b"1"]).map(lambda version: field(2, 2, version)),
    st.binary(max_size=4).map(lambda raw: field(7, 2, raw)),
)


@FAST
@given(st.lists(raw_fields, max_size=6).map(b"".join), st.data())
def test_hostile_wire_bytes_are_read_as_protobuf_reads_them_or_refused(
    message: bytes, data: st.DataObject
) -> None:
    cut = data.draw(st.integers(min_value=0, max_value=len(message)))
    check_request(message[: len(message) if data.draw(st.booleans()) else cut])


# Parameters the protobuf property found that the gateway once read differently from protobuf (issue #12): a
# whole number before a member protobuf reads instead (the last on the wire), so that the gateway reserved
# for the small number while the backend read the other. Each is now refused.
MIXED_PARAMETERS = {
    "int64 then double": field(2, 0, encode(1)) + field(4, 1, struct.pack("<d", 1e9)),
    "int64 then bool": field(2, 0, encode(0)) + field(1, 0, b"\x00"),
    "int64 twice": field(2, 0, encode(1)) + field(2, 0, encode(9)),
}


@pytest.mark.parametrize("parameter", MIXED_PARAMETERS.values(), ids=list(MIXED_PARAMETERS))
def test_parameters_with_several_members_are_refused(parameter: bytes) -> None:
    entry = field(1, 2, b"max_tokens") + field(2, 2, parameter)
    assert PROTOBUF.grpc_max_tokens(wire(field(4, 2, entry))) == (
        None,
        lua_text(b"parameters.max_tokens must hold exactly one value"),
    )


def test_max_tokens_given_twice_or_in_an_entry_read_two_ways_is_refused() -> None:
    one = field(4, 2, field(1, 2, b"max_tokens") + field(2, 2, field(2, 0, encode(5))))
    merged = field(4, 2, field(1, 2, b"max_tokens") + field(2, 2, b"") + field(2, 2, field(2, 0, encode(5))))
    assert PROTOBUF.grpc_max_tokens(wire(one)) == 5
    assert PROTOBUF.grpc_max_tokens(wire(one + one))[1] == lua_text(
        b"parameters.max_tokens is given more than once"
    )
    assert PROTOBUF.grpc_max_tokens(wire(merged))[1] == lua_text(
        b"parameters: an entry repeats its key or its value"
    )


@FAST
@given(st.binary(max_size=40))
def test_arbitrary_bytes_never_break_the_readers(message: bytes) -> None:
    check_request(message)


@FAST
@given(st.integers(min_value=0, max_value=LUA_EXACT))
def test_varints_are_protobufs(value: int) -> None:
    encoded = encode(value)
    assert from_lua(PROTOBUF.encode_varint(value)) == encoded
    assert PROTOBUF.varint(wire(encoded + b"\x01"), 1) == (value, len(encoded) + 1)


# Names in the ratelimit service's counters: the Lua and the operator write them alike, dots never remain.

ACCESS = Module("access")


@FAST
@given(st.text(alphabet=st.sampled_from("a.%2E@:/-_"), max_size=12) | st.text(max_size=12))
def test_names_in_counters_are_written_alike_and_without_dots(name: str) -> None:
    written = from_lua(ACCESS.counter_name(lua_text(name.encode()))).decode()
    assert written == counter_name(name) and "." not in written
    assert urllib.parse.unquote(written) == name  # nothing is lost: two names are never one counter
