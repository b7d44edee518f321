"""The OpenAI side of a model on real components: `tollway openai-server`, on the command line the operator
renders beside a language model's Triton, next to the real Triton serving two streaming language models
(tests/models/streamer, a token every 20 ms), and the official `openai` SDK as the client (sync and async,
streamed and not), plus curl for the raw Server-Sent Events."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import openai
import pytest

from testbed.triton import language_model, running, start_openai_server

TOKEN_MS = 20
"""The streamer's pause before each token."""


@dataclass
class Servers:
    chat: str
    completion: str
    """Each model's OpenAI base URL."""


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    workdir = tmp_path_factory.mktemp("openai")
    models = (language_model("assistant", "chat"), language_model("writer", "completion"))
    with running(workdir, *models) as triton:
        chat, chat_url = start_openai_server(workdir, models[0], triton)
        completion, completion_url = start_openai_server(workdir, models[1], triton)
        try:
            yield Servers(chat_url, completion_url)
        finally:
            completion.stop()
            chat.stop()


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="unused-here", max_retries=0)


ASKED = [{"role": "user", "content": "tell me more"}]
ANSWER_OF_10 = "tell me more tell me more tell me more tell "


def test_a_chat_answer_with_its_usage_and_the_version_that_served_it(servers: Servers) -> None:
    answer = client(servers.chat).chat.completions.create(model="assistant", messages=ASKED, max_tokens=10)
    assert answer.choices[0].message.content == ANSWER_OF_10
    assert answer.choices[0].finish_reason == "length"
    assert answer.model == "assistant@1"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (
        3,
        10,
        13,
    )


def test_a_streamed_chat_answer_arrives_as_the_model_makes_it(servers: Servers) -> None:
    sent = time.perf_counter()
    chunks = []
    stream = client(servers.chat).chat.completions.create(
        model="assistant", messages=ASKED, max_tokens=10, stream=True, stream_options={"include_usage": True}
    )
    for chunk in stream:
        chunks.append((time.perf_counter() - sent, chunk))
    pieces = [(at, chunk.choices[0].delta.content) for at, chunk in chunks if chunk.choices]
    content = [(at, text) for at, text in pieces if text]
    assert "".join(text for _, text in content) == ANSWER_OF_10
    assert len(content) == 10  # a chunk per token
    # The first token reached the client before the model had made the last: 9 pauses later.
    first, last = content[0][0], content[-1][0]
    assert last - first >= 9 * TOKEN_MS / 1000 * 0.9, (first, last)
    assert chunks[0][1].choices[0].delta.role == "assistant"
    assert [chunk.choices[0].finish_reason for _, chunk in chunks if chunk.choices][-1] == "length"
    final = chunks[-1][1]  # the usage chunk the client asked for: no choices
    assert final.choices == [] and final.usage is not None and final.usage.completion_tokens == 10


def test_a_stream_carries_no_usage_chunk_unless_asked(servers: Servers) -> None:
    stream = client(servers.chat).chat.completions.create(
        model="assistant", messages=ASKED, max_tokens=3, stream=True
    )
    chunks = list(stream)
    assert all(chunk.usage is None and chunk.choices for chunk in chunks)


def test_the_async_client_streams_too(servers: Servers) -> None:
    async def collect() -> str:
        async with openai.AsyncOpenAI(base_url=servers.chat, api_key="unused", max_retries=0) as async_client:
            stream = await async_client.chat.completions.create(
                model="assistant", messages=ASKED, max_tokens=10, stream=True
            )
            return "".join([chunk.choices[0].delta.content or "" async for chunk in stream])

    assert asyncio.run(collect()) == ANSWER_OF_10


def test_a_completion_streamed_and_not(servers: Servers) -> None:
    writer = client(servers.completion)
    whole = writer.completions.create(model="writer", prompt="once upon a time", max_tokens=5)
    assert whole.choices[0].text == "once upon a time once "
    assert whole.usage is not None and whole.usage.prompt_tokens == 4
    streamed = writer.completions.create(model="writer", prompt="once upon a time", max_tokens=5, stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed) == "once upon a time once "


def test_a_request_the_model_cannot_serve_gets_openais_error(servers: Servers) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client(servers.chat).chat.completions.create(model="assistant", messages=ASKED, n=2)
    assert refused.value.code is None and "only n = 1" in refused.value.message
    assert refused.value.body == {"message": "only n = 1 is supported", "type": "invalid_request_error",
                                  "param": "n", "code": None}  # fmt: skip


def test_raw_server_sent_events_end_with_done(servers: Servers) -> None:
    body = '{"model":"assistant","messages":[{"role":"user","content":"hi"}],"max_tokens":2,"stream":true}'
    url = f"{servers.chat}/chat/completions"
    done = subprocess.run(
        ["curl", "-sN", "-H", "content-type: application/json", "-d", body, url],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    events = [line for line in done.stdout.split("\n\n") if line]
    assert all(event.startswith("data: ") for event in events)
    assert events[-1] == "data: [DONE]" and len(events) == 2 + 1 + 1  # two tokens, the finish, [DONE]
