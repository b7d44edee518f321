"""The gateway's quality signals under LuaJIT: what a sampled request's record keeps (cut, masked, valid
UTF-8), the redaction patterns a tier writes as regular expressions, feedback on an answer, regenerations,
answers that say their content was filtered, and the capacity document consumers read."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
from lua_gateway import GatewayProgram, Module, from_lua, lua_text
from test_gateway_lua import NOW
from test_gateway_lua_openai import CHAT, OPENAI, START_MS, STREAMED, chat, event, openai_data, streamed_state

from tollway.render.redaction import UnsupportedPattern, lua_pattern

MASK = "[REDACTED]"
EVERYTHING = {"emails": True, "cards": True, "patterns": []}


@pytest.fixture(scope="module")
def sample() -> Module:
    return Module("sample")


def redact(sample: Module, text: str, **redact: Any) -> str:
    return str(sample.redact(text, sample.lua_value({**EVERYTHING, **redact})))


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("write to ana.ruiz+ai@mail.example.org.", f"write to {MASK}."),
        ('{"content":"bob@corp.io, ok"}', '{"content":"' + MASK + ', ok"}'),
        ("a@b and x@localhost are no addresses", "a@b and x@localhost are no addresses"),
        ("card 4111 1111 1111 1111 exp", f"card {MASK} exp"),
        ("card 4111-1111-1111-1111", f"card {MASK}"),
        ("order 12345 of 2026-11-30", "order 12345 of 2026-11-30"),
    ],
)
def test_addresses_and_card_numbers_are_masked_and_the_rest_is_kept(
    sample: Module, text: str, masked: str
) -> None:
    assert redact(sample, text) == masked


def test_a_long_run_without_an_at_sign_costs_linear_time(sample: Module) -> None:
    """Addresses are found from their @: a body of address characters holds no match to try everywhere."""
    text = "a" * 200_000 + "@example.com"
    assert redact(sample, text) == "a" * (200_000 - 64) + MASK


@pytest.mark.parametrize(
    ("regex", "text", "masked"),
    [
        (r"sk-[A-Za-z0-9_-]{20,}", "key sk-abcdefghij0123456789XYZ end", f"key {MASK} end"),
        (r"sk-[A-Za-z0-9_-]{20,}", "key sk-short end", "key sk-short end"),
        (r"AKIA[0-9A-Z]{16}", "id AKIAABCDEFGHIJKLMNOP.", f"id {MASK}."),
        (r"\d{3}-\d{2}-\d{4}", "ssn 078-05-1120", f"ssn {MASK}"),
        (r"acct: ?\w+", "acct: X_12 rest", f"{MASK} rest"),
        (r"x{2,4}y", "axxxxxxyb", f"a{MASK}b"),  # {n,m} masks the whole run: the safe side
        (r"[^,]+@corp\.example", "a,me.x@corp.example", f"a,{MASK}"),
        (r"^secret", "secret here, secret there", f"{MASK} here, secret there"),
    ],
)
def test_a_tiers_patterns_mask_what_the_regular_expression_matches(
    sample: Module, regex: str, text: str, masked: str
) -> None:
    assert redact(sample, text, emails=False, cards=False, patterns=[lua_pattern(regex)]) == masked


@pytest.mark.parametrize(
    ("regex", "why"),
    [
        ("a|b", "no groups or alternation"),
        ("(sk)-x", "no groups or alternation"),
        (r"\bword", r"\b at 0 is not supported"),
        ("a*b+", "at most one of"),
        ("x{3,1}", "must have n ≤ m"),
        ("[a-z", "never closes"),
        ("*x", "repeats nothing"),
        ("a$b", "only at the end"),
        ("a?" * 9, "at most 8 ?"),
    ],
)
def test_a_pattern_the_gateway_cannot_run_as_written_is_refused_with_a_reason(regex: str, why: str) -> None:
    with pytest.raises(UnsupportedPattern, match=re.escape(why)):
        lua_pattern(regex)


def test_a_record_keeps_at_most_its_size_masked_before_it_is_cut(sample: Module) -> None:
    redaction = sample.lua_value(EVERYTHING)
    kept, cut = sample.kept("x" * 10 + " joe@example.com tail", redaction, 16)
    assert (kept, cut) == (f"xxxxxxxxxx {MASK}"[:16], True)  # the address was masked whole, then cut
    assert sample.kept("short", redaction, 16) == ("short", False)


def test_a_record_is_valid_utf8_whatever_the_body_held(sample: Module) -> None:
    text = "ok é € 😀".encode() + b" \xc3 \xed\xa0\x80 \xe2\x82\xac\x80 \xff end"
    kept = from_lua(sample.utf8(lua_text(text)))
    assert kept.decode("utf-8") == "ok é € 😀 ? ??? €? ? end"


def test_a_streamed_answer_is_put_back_together(sample: Module) -> None:
    events = b"".join(event(piece, 3, n) for n, piece in enumerate(["Hel", 'lo "y', 'ou"\n', "\u00e9 \\"], 1))
    events += b"data: [DONE]\n\n"
    assert from_lua(sample.stream_text(lua_text(events))).decode() == 'Hello "you"\n\u00e9 \\'


def test_content_filtering_is_read_from_the_finish_reason_never_from_generated_text(sample: Module) -> None:
    stopped = json.dumps({"choices": [{"delta": {}, "finish_reason": "content_filter"}]})
    assert sample.filtered(f"data: {stopped}\n\n")
    said = json.dumps({"choices": [{"delta": {"content": '"finish_reason": "content_filter"'}}]})
    assert not sample.filtered(f"data: {said}\n\n")


def test_the_memory_of_prompts_is_bounded_and_remembers_within_its_window(sample: Module) -> None:
    seen = sample.recent(600, 3)
    assert [seen("a", 0), seen("a", 5)] == [False, True]
    assert [seen("b", 6), seen("c", 7), seen("d", 8)] == [False, False, False]  # a new generation at "d"
    assert seen("a", 9)  # still in the older generation
    assert [seen(key, 10) for key in "efgh"] == [False] * 4
    assert not seen("b", 11)  # two generations later: forgotten
    assert not seen("e", 11 + 600)  # and beyond the window


# The programs

SAMPLED = {"ppm": 1_000_000, "most": 4096, "redact": {**EVERYTHING, "patterns": [lua_pattern(r"sk-\w{8,}")]}}


def program(**pro_sampling: Any) -> GatewayProgram:
    data = copy.deepcopy(openai_data())
    data["tiers"]["pro"]["sampling"] = {**data["tiers"]["pro"]["sampling"], **pro_sampling}
    return GatewayProgram(data, NOW)


def test_a_sampled_request_keeps_its_body_masked_and_its_answer_put_back_together() -> None:
    gateway = program(**SAMPLED)
    body = chat(
        messages=[{"role": "user", "content": "mail ana@corp.example, key sk-12345678abc"}], stream=True
    )
    handle = gateway.request(CHAT, body, route=OPENAI, clock=[START_MS])
    assert handle.reply is None and handle.tollway["sample"] == "1"
    assert handle.tollway["sample_request"] == body.decode().replace("ana@corp.example", MASK).replace(
        "sk-12345678abc", MASK
    )
    chunks = [event("Write ", 5, 1), event("to bob@corp.example", 5, 2), b"data: [DONE]\n\n"]
    answered = gateway.response(
        STREAMED, metadata=streamed_state(sample="1"), chunks=chunks, clock=[START_MS + 9]
    )
    assert answered.tollway["sample_response"] == f"Write to {MASK}"
    assert "sample_response_cut" not in answered.tollway


def test_a_long_sampled_stream_keeps_its_start_and_says_it_was_cut() -> None:
    gateway = program(**{**SAMPLED, "most": 256})
    chunks = [event(f"word{n} ", 5, n) for n in range(1, 200)] + [b"data: [DONE]\n\n"]
    handle = gateway.response(
        STREAMED, metadata=streamed_state(sample="1"), chunks=chunks, clock=[START_MS + 9]
    )
    assert handle.tollway["sample_response"].startswith("word1 word2 word3 ")
    assert len(handle.tollway["sample_response"]) <= 256 and handle.tollway["sample_response_cut"] == "1"
    assert handle.tollway["output_tokens"] == "199"  # metering read the whole stream


def test_a_tier_that_never_samples_overrides_its_models_rate() -> None:
    data = copy.deepcopy(openai_data())
    data["models"]["chat"]["sample_ppm"] = 1_000_000
    data["tiers"]["free"]["sampling"] = {**data["tiers"]["free"]["sampling"], "ppm": 0}
    gateway = GatewayProgram(data, NOW)
    assert gateway.request(CHAT, chat(), route=OPENAI).tollway["sample"] == "1"  # pro: the model's rate
    free = gateway.request({**CHAT, "authorization": "Bearer k-free"}, chat(), route=OPENAI)
    assert free.reply is None and "sample" not in free.tollway


def test_an_unsampled_answer_is_not_kept_but_its_filtering_is_counted() -> None:
    gateway = program()
    filtered = json.dumps({"choices": [{"delta": {}, "finish_reason": "content_filter"}]})
    chunks = [event("no", 5, 1), f"data: {filtered}\n\n".encode(), b"data: [DONE]\n\n"]
    handle = gateway.response(STREAMED, metadata=streamed_state(), chunks=chunks, clock=[START_MS + 9])
    assert handle.tollway["content_filtered"] == "1" and "sample_response" not in handle.tollway


def test_the_same_prompt_again_from_the_same_consumer_is_a_regeneration() -> None:
    gateway = program()
    first = gateway.request(CHAT, chat(temperature=1), route=OPENAI)
    again = gateway.request(CHAT, chat(temperature=1), route=OPENAI)
    other_model_version = gateway.request(CHAT, chat(model="chat@1", temperature=1), route=OPENAI)
    other_consumer = gateway.request(
        {**CHAT, "authorization": "Bearer k-free"}, chat(temperature=1), route=OPENAI
    )
    assert "regeneration" not in first.tollway and again.tollway["regeneration"] == "1"
    assert "regeneration" not in other_model_version.tollway and "regeneration" not in other_consumer.tollway
    gateway.now = NOW + 601
    assert "regeneration" not in gateway.request(CHAT, chat(temperature=1), route=OPENAI).tollway


FEEDBACK = {":path": "/v1/feedback", ":method": "POST", "authorization": "Bearer k-pro"}


def test_feedback_on_an_answer_is_recorded_and_counts_against_the_request_limits() -> None:
    gateway = program(**SAMPLED)
    said = {"request_id": "6f1c-42ab", "model": "chat@2", "rating": 4, "comment": "to ana@corp.example"}
    handle = gateway.request(FEEDBACK, json.dumps(said).encode(), route={"kind": "feedback"})
    assert handle.reply is None and handle.errors == []  # its route answers 202
    assert {
        key: handle.tollway[key] for key in handle.tollway if key.startswith(("feedback", "model", "version"))
    } == {
        "feedback_rating": "4",
        "feedback_for": "6f1c-42ab",
        "feedback_comment": f"to {MASK}",
        "model": "chat",
        "version": "2",
    }
    assert handle.tollway["rpm_grpc_closed"] == "pro" and "tpm_closed" not in handle.tollway


@pytest.mark.parametrize(
    ("said", "status", "why"),
    [
        (
            {"request_id": "r1", "model": "chat", "rating": 6},
            400,
            "rating must be a whole number from 1 to 5",
        ),
        (
            {"request_id": "r1", "model": "chat", "rating": "5"},
            400,
            "rating must be a whole number from 1 to 5",
        ),
        ({"request_id": "r 1", "model": "chat", "rating": 5}, 400, "request_id must be the x-request-id"),
        ({"request_id": "r1", "rating": 5}, 400, "model must name the model that answered"),
        ({"request_id": "r1", "model": "chat", "rating": 5, "comment": 3}, 400, "comment must be a string"),
        ({"request_id": "r1", "model": "nope", "rating": 5}, 404, "no model nope"),
    ],
)
def test_feedback_that_cannot_be_read_one_way_is_refused(said: dict[str, Any], status: int, why: str) -> None:
    handle = program().request(FEEDBACK, json.dumps(said).encode(), route={"kind": "feedback"})
    assert handle.answer is not None and handle.answer[0] == status and why in handle.answer[1]
    assert "feedback_rating" not in handle.tollway


def test_feedback_on_a_version_the_tier_may_not_use_gets_403() -> None:
    said = json.dumps({"request_id": "r1", "model": "chat@1", "rating": 1}).encode()
    handle = program().request(
        {**FEEDBACK, "authorization": "Bearer k-free"}, said, route={"kind": "feedback"}
    )
    assert handle.answer == (403, "tier free may not use chat version 1")


def test_feedback_with_a_duplicate_key_is_refused() -> None:
    said = b'{"request_id": "r1", "model": "chat", "rating": 1, "rating": 5}'
    handle = program().request(FEEDBACK, said, route={"kind": "feedback"})
    assert handle.answer == (400, "rating appears twice in the request")


# Capacity, as consumers may read it


def test_the_capacity_document_is_read_again_every_few_seconds_and_filtered_to_the_tier(
    tmp_path: Any,
) -> None:
    document = tmp_path / "capacity.jsonl"
    data = copy.deepcopy(openai_data())
    data["capacity_file"], data["capacity_seconds"] = str(document), 5
    for name, tier in data["tiers"].items():
        tier["served"] = ["chat", "vision"] if name == "pro" else ["chat"]
    gateway = GatewayProgram(data, NOW)
    asked = {":path": "/v1/capacity", "authorization": "Bearer k-pro"}

    def answer(headers: dict[str, str] = asked) -> Any:
        handle = gateway.request(headers, route={"kind": "capacity"})
        assert handle.reply is not None and handle.reply.status == 200
        return json.loads(handle.reply.body)["data"]

    assert answer() == [{"model": "chat", "state": "unknown"}, {"model": "vision", "state": "unknown"}]
    document.write_text(
        '{"model":"chat","state":"at_capacity","at_capacity":true,"estimated_wait_seconds":4.5}\n'
    )
    assert answer()[0]["state"] == "unknown"  # read again only after a few seconds
    gateway.now = NOW + 5
    assert answer() == [
        {"model": "chat", "state": "at_capacity", "at_capacity": True, "estimated_wait_seconds": 4.5},
        {"model": "vision", "state": "unknown"},
    ]
    assert [entry["model"] for entry in answer({**asked, "authorization": "Bearer k-free"})] == ["chat"]
    anonymous = gateway.request({":path": "/v1/capacity"}, route={"kind": "capacity"})
    assert anonymous.answer is not None and anonymous.answer[0] == 401
