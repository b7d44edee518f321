"""The OpenAI wire format in isolation: requests read into what to ask the model, answers and stream chunks
in OpenAI's shapes, errors in OpenAI's error object; and token counts from a model's own tokenizer."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from tollway.openai.protocol import (
    Answer,
    ChatTemplate,
    Generation,
    RequestError,
    Usage,
    embeddings,
    error_object,
    event,
    finish_reason,
    read_embedding_request,
    read_request,
)
from tollway.openai.tokens import TokenCounter

TEMPLATE = ChatTemplate(
    "{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}",
    bos_token="<s>",
)


def chat(**fields: Any) -> bytes:
    return json.dumps(
        {"model": "assistant", "messages": [{"role": "user", "content": "hi"}], **fields}
    ).encode()


def test_chat_messages_become_the_prompt_through_the_models_template() -> None:
    body = chat(
        messages=[
            {"role": "system", "content": "be brief"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "hello "}, {"type": "text", "text": "there"}],
            },
        ],
        max_completion_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    assert read_request("chat", body, 256, TEMPLATE) == Generation(
        kind="chat",
        model="assistant",
        prompt="<s><|system|>be brief\n<|user|>hello there\n<|assistant|>",
        max_tokens=12,
        stream=True,
        include_usage=True,
    )


def test_a_completion_takes_its_prompt_and_the_models_default_max_tokens() -> None:
    body = json.dumps({"model": "writer@2", "prompt": ["once upon"]}).encode()
    assert read_request("completion", body, 64) == Generation(
        "completion", "writer@2", "once upon", 64, False, False
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{", None),
        (b"[]", None),
        (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), "model"),
        (chat(n=2), "n"),
        (chat(max_tokens=0), "max_tokens"),
        (chat(max_tokens=True), "max_tokens"),
        (chat(max_tokens="5"), "max_tokens"),
        (chat(stream="yes"), "stream"),
        (chat(stream_options=[]), "stream_options"),
        (chat(messages=[]), "messages"),
        (chat(messages=[{"role": "wizard", "content": "x"}]), "messages[0]"),
        (chat(messages=[{"role": "user", "content": [{"type": "image_url"}]}]), "messages[0].content"),
        (chat(messages=[{"role": "user", "content": 7}]), "messages[0].content"),
    ],
)
def test_a_request_the_model_cannot_serve_is_refused_naming_the_field(body: bytes, param: str | None) -> None:
    with pytest.raises(RequestError) as refused:
        read_request("chat", body, 256, TEMPLATE)
    assert refused.value.status == 400 and refused.value.param == param


def test_a_template_that_raises_refuses_the_request_with_its_message() -> None:
    strict = ChatTemplate(
        "{% if messages[0].role != 'system' %}{{ raise_exception('system first') }}{% endif %}"
    )
    with pytest.raises(RequestError, match="system first"):
        read_request("chat", chat(), 256, strict)


def test_a_template_runs_sandboxed() -> None:
    hostile = ChatTemplate("{{ messages.__class__.__mro__ }}")
    with pytest.raises(RequestError, match="refused"):
        read_request("chat", chat(), 256, hostile)


def test_the_chat_template_and_special_tokens_come_from_tokenizer_config() -> None:
    config = {
        "chat_template": [
            {"name": "default", "template": "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}"}
        ],
        "bos_token": {"content": "<s>"},
        "eos_token": "</s>",
    }
    assert ChatTemplate.from_tokenizer_config(config).prompt([{"role": "user", "content": "x"}]) == "<s>x</s>"
    with pytest.raises(ValueError, match="no chat_template"):
        ChatTemplate.from_tokenizer_config({})


def test_a_whole_answer_in_openais_shapes() -> None:
    answer = Answer("chat", "assistant@3", "chatcmpl-1", 1700000000)
    assert answer.whole("hello", "stop", Usage(4, 2)) == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "assistant@3",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6},
    }
    completion = Answer("completion", "writer@1", "cmpl-1", 1).whole("x", "length", Usage(1, 1))
    assert completion["object"] == "text_completion"
    assert completion["choices"] == [{"index": 0, "text": "x", "logprobs": None, "finish_reason": "length"}]


def test_stream_chunks_name_the_role_first_the_reason_last_and_the_usage_apart() -> None:
    answer = Answer("chat", "assistant@3", "chatcmpl-1", 1)
    first, middle, last = answer.chunk("he", first=True), answer.chunk("llo"), answer.chunk("", "length")
    assert first["object"] == "chat.completion.chunk"
    assert [chunk["choices"][0]["delta"] for chunk in (first, middle, last)] == [
        {"role": "assistant", "content": "he"},
        {"content": "llo"},
        {},
    ]
    assert [chunk["choices"][0]["finish_reason"] for chunk in (first, middle, last)] == [None, None, "length"]
    usage = answer.usage_chunk(Usage(3, 5))
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 8


def test_the_finish_reason_says_whether_the_answer_ran_out_of_tokens() -> None:
    assert finish_reason(Usage(3, 16), 16) == "length"
    assert finish_reason(Usage(3, 5), 16) == "stop"


def test_events_and_errors_on_the_wire() -> None:
    assert event({"a": 1}) == b'data: {"a":1}\n\n'
    assert event("[DONE]") == b"data: [DONE]\n\n"
    assert error_object("no", 400, "model") == {
        "error": {"message": "no", "type": "invalid_request_error", "param": "model", "code": None}
    }
    assert error_object("down", 502)["error"]["type"] == "api_error"


def test_a_model_that_reports_no_counts_is_counted_by_its_own_tokenizer(tmp_path: Path) -> None:
    vocabulary = {"[UNK]": 0, "tell": 1, "me": 2, "more": 3}
    tokenizer = Tokenizer(WordLevel(vocabulary, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    counter = TokenCounter.from_file(tmp_path / "tokenizer.json")
    assert counter is not None
    # unknown, '-' and word: an [UNK] each
    assert counter.usage("tell me more", "more more unknown-word") == Usage(3, 5)
    assert TokenCounter.from_file(tmp_path / "absent.json") is None


def test_an_answer_nobody_counted_carries_no_usage_rather_than_zero() -> None:
    answer = Answer("chat", "assistant@3", "chatcmpl-1", 1).whole("hello", "stop", None)
    assert "usage" not in answer


def test_an_embedding_request_takes_one_text_or_several_and_an_encoding() -> None:
    one = read_embedding_request(json.dumps({"model": "e", "input": "hi"}).encode())
    assert (one.texts, one.base64) == (["hi"], False)
    several = read_embedding_request(
        json.dumps({"model": "e", "input": ["a", "b"], "encoding_format": "base64"}).encode()
    )
    assert (several.texts, several.base64) == (["a", "b"], True)
    refusals = [
        ({"input": "x"}, "model"),
        ({"model": "e", "input": []}, "input"),
        ({"model": "e", "input": [""]}, "input"),
        ({"model": "e", "input": [1]}, "input"),
        ({"model": "e", "input": "x", "encoding_format": "int8"}, "encoding_format"),
    ]
    for wrong, param in refusals:
        with pytest.raises(RequestError) as refused:
            read_embedding_request(json.dumps(wrong).encode())
        assert refused.value.param == param


def test_embeddings_answer_floats_or_base64_of_little_endian_float32s() -> None:
    answer = embeddings("e@1", [[1.0, -2.5]], Usage(3, 0), base64=False)
    assert answer == {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [1.0, -2.5]}],
        "model": "e@1",
        "usage": {"prompt_tokens": 3, "total_tokens": 3},
    }
    encoded = embeddings("e@1", [[1.0, -2.5]], None, base64=True)
    assert struct.unpack("<2f", base64.b64decode(encoded["data"][0]["embedding"])) == (1.0, -2.5)
    assert "usage" not in encoded
