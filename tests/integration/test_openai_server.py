"""The OpenAI side of a model on real components: `tollway openai-server`, on the command line the operator
renders beside a model's Triton, next to the real Triton serving streaming language models
(tests/models/streamer, a token every 20 ms) and an embedding model (tests/models/embedder), and the
official `openai` SDK as the client (sync and async, streamed and not), plus curl for the raw Server-Sent
Events."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit

from testbed.kube import eventually
from testbed.triton import contents, held_chat_stream, language_model, running, start_openai_server


@dataclass
class Servers:
    """Each model's OpenAI base URL (`uncounted`: a completion model that reports no token counts, whose
    tokenizer.json counts them; `batched_embedding`: an embedding model that batches, a row a text)."""

    chat: str
    completion: str
    uncounted: str
    embedding: str
    batched_embedding: str
    models: Path
    """Triton's model repository (the streamer notes cancelled requests there and looks there for holds)."""


def word_tokenizer(path: Path) -> Path:
    """A tokenizer.json that makes a token of each word: the streamer's own idea of a token."""
    tokenizer = Tokenizer(WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = WhitespaceSplit()
    tokenizer.save(str(path))
    return path


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    workdir = tmp_path_factory.mktemp("openai")
    chat, completion, uncounted, embedding, batched = (
        language_model("assistant", "chat"),
        language_model("writer", "completion"),
        language_model("writer-uncounted", "completion"),
        language_model("embedder", "embedding"),
        language_model("batched-embedder", "embedding", max_batch_size=8),
    )
    with running(workdir, chat, completion, uncounted, embedding, batched) as triton:
        servers = [
            start_openai_server(workdir, chat, triton),
            start_openai_server(workdir, completion, triton),
            start_openai_server(workdir, uncounted, triton, word_tokenizer(workdir / "tokenizer.json")),
            start_openai_server(workdir, embedding, triton),
            start_openai_server(workdir, batched, triton),
        ]
        try:
            yield Servers(*(url for _, url in servers), models=workdir / "models")
        finally:
            for process, _ in servers:
                process.stop()


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


def test_a_server_without_a_cache_says_nothing_of_one(servers: Servers) -> None:
    """The response cache is off unless asked for (tests/integration/test_openai_server_cache.py): no cache
    header, and the usage as before, with nothing about cached tokens."""
    raw = client(servers.chat).chat.completions.with_raw_response.create(
        model="assistant", messages=ASKED, max_tokens=2, temperature=0
    )
    assert "x-tollway-cache" not in raw.headers and "age" not in raw.headers
    usage = raw.parse().usage
    assert usage is not None and usage.prompt_tokens_details is None


def test_a_streamed_chat_answer_arrives_as_the_model_makes_it(servers: Servers) -> None:
    _, chunks = held_chat_stream(
        servers.models,
        "assistant",
        lambda: client(servers.chat).chat.completions.create(
            model="assistant",
            messages=ASKED,
            max_tokens=10,
            stream=True,
            stream_options={"include_usage": True},
        ),
    )
    content = contents(chunks)
    assert "".join(content) == ANSWER_OF_10
    assert len(content) == 10  # a chunk per token
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == "length"
    final = chunks[-1]  # the usage chunk the client asked for: no choices
    assert final.choices == [] and final.usage is not None and final.usage.completion_tokens == 10


def test_a_stream_carries_no_usage_chunk_unless_asked(servers: Servers) -> None:
    stream = client(servers.chat).chat.completions.create(
        model="assistant", messages=ASKED, max_tokens=3, stream=True
    )
    chunks = list(stream)
    assert all(chunk.usage is None and chunk.choices for chunk in chunks)


def test_a_client_that_leaves_mid_stream_stops_the_generation(servers: Servers) -> None:
    """Triton's request is cancelled when its caller goes away: the model stops instead of generating for
    nobody (the streamer notes the token it stopped at)."""
    stream = client(servers.completion).completions.create(
        model="writer", prompt="on and on", max_tokens=500, stream=True
    )
    for _, _chunk in zip(range(3), stream, strict=False):
        pass  # three tokens in, the client leaves
    stream.close()
    noted = servers.models / "writer" / "cancelled"
    eventually(lambda: noted.exists() and noted.read_text(), timeout=20)  # long before 500 x 20 ms


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


def test_a_model_that_reports_no_counts_is_counted_by_its_tokenizer(servers: Servers) -> None:
    writer = client(servers.uncounted)
    whole = writer.completions.create(model="writer-uncounted", prompt="once upon a time", max_tokens=5)
    assert whole.choices[0].text == "once upon a time once "
    assert whole.usage is not None and (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (4, 5)
    streamed = writer.completions.create(
        model="writer-uncounted", prompt="once upon a time", max_tokens=5, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    final = list(streamed)[-1]
    assert final.usage is not None and final.usage.completion_tokens == 5


def test_embeddings_in_input_order_as_floats_or_the_sdks_base64(servers: Servers) -> None:
    embedder = client(servers.embedding)
    # the SDK asks for base64 and decodes it; the vectors are the stand-in's: words, characters, 'a's, 1
    answer = embedder.embeddings.create(model="embedder", input=["a banana", "tell me more"])
    assert [item.embedding for item in answer.data] == [[2.0, 8.0, 4.0, 1.0], [3.0, 12.0, 0.0, 1.0]]
    assert [item.index for item in answer.data] == [0, 1]
    assert answer.model == "embedder@1" and answer.usage.prompt_tokens == answer.usage.total_tokens == 5
    floats = embedder.embeddings.create(model="embedder", input="a banana", encoding_format="float")
    assert floats.data[0].embedding == [2.0, 8.0, 4.0, 1.0]
    with pytest.raises(openai.BadRequestError, match="input must be"):
        embedder.embeddings.create(model="embedder", input=[])


def test_a_batching_embedding_model_gets_a_row_a_text(servers: Servers) -> None:
    """An embedding model with max_batch_size above 0 (as an ONNX one has) takes its texts as rows of a
    batch, and reports its counts a row a text: summed."""
    answer = client(servers.batched_embedding).embeddings.create(
        model="batched-embedder", input=["a banana", "tell me more", "x"], encoding_format="float"
    )
    assert [item.embedding for item in answer.data] == [
        [2.0, 8.0, 4.0, 1.0],
        [3.0, 12.0, 0.0, 1.0],
        [1.0, 1.0, 0.0, 1.0],
    ]
    assert answer.usage.prompt_tokens == 6


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
    blocks = [block for block in done.stdout.split("\n\n") if block]
    # each piece of the answer is followed by the usage so far, as a comment that SSE clients ignore
    events = [block for block in blocks if block.startswith("data: ")]
    comments = [block for block in blocks if block.startswith(": usage ")]
    assert len(events) + len(comments) == len(blocks)
    assert events[-1] == "data: [DONE]" and len(events) == 2 + 1 + 1  # two tokens, the finish, [DONE]
    # (the model counts its prompt only at the end: until then each piece is a token and the prompt unknown)
    assert comments == [": usage 0 1", ": usage 0 2", ": usage 1 2"]
