"""A streaming chat model (spec.model.openai kind chat) on the real Triton server: Tollway renders it
decoupled, and Triton sends its answer a piece at a time over gRPC streaming, the first piece long before
the last (the stand-in model, tests/models/streamer, waits DELAY between tokens)."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http

from testbed.triton import RunningTriton, language_model, running

DELAY_MS = 150
TOKENS = 6


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningTriton]:
    with running(tmp_path_factory.mktemp("streaming"), language_model("assistant", "chat")) as server:
        yield server


def inputs(prompt: str, *, stream: bool) -> list[triton_grpc.InferInput]:
    text = triton_grpc.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([prompt.encode()], dtype=np.object_))
    tokens = triton_grpc.InferInput("max_tokens", [1], "INT32")
    tokens.set_data_from_numpy(np.array([TOKENS], dtype=np.int32))
    streaming = triton_grpc.InferInput("stream", [1], "BOOL")
    streaming.set_data_from_numpy(np.array([stream], dtype=bool))
    return [text, tokens, streaming]


def stream(triton: RunningTriton, prompt: str, *, streaming: bool) -> list[tuple[float, Any]]:
    """Every response to one request over gRPC streaming, with the seconds since it was sent."""
    received: queue.Queue[tuple[float, Any]] = queue.Queue()
    client = triton_grpc.InferenceServerClient(triton.grpc)
    client.start_stream(callback=lambda result, error: received.put((time.perf_counter(), error or result)))
    sent = time.perf_counter()
    client.async_stream_infer(
        "assistant", inputs(prompt, stream=streaming), parameters={"delay_ms": DELAY_MS},
        enable_empty_final_response=True,
    )  # fmt: skip
    responses = []
    while True:
        arrived, result = received.get(timeout=30)
        assert not isinstance(result, Exception), result.message()
        responses.append((arrived - sent, result))
        if result.get_response().parameters["triton_final_response"].bool_param:
            break
    client.stop_stream()
    return responses


def text(result: Any) -> str:
    return "".join(piece.decode() for piece in result.as_numpy("text_output").reshape(-1))


def test_the_chat_model_is_served_decoupled(triton: RunningTriton) -> None:
    config = triton_http.InferenceServerClient(triton.http).get_model_config("assistant")
    assert config["model_transaction_policy"] == {"decoupled": True}


def test_a_streamed_answer_arrives_a_token_at_a_time(triton: RunningTriton) -> None:
    responses = stream(triton, "tell me more", streaming=True)
    pieces = [text(result) for _, result in responses]
    assert "".join(pieces) == "tell me more tell me more "
    assert len([piece for piece in pieces if piece]) == TOKENS
    first, last = responses[0][0], responses[-1][0]
    # the first token came when the model produced it, not with the last one
    assert last - first >= (TOKENS - 1) * DELAY_MS / 1000 * 0.9, (first, last)
    final = responses[-1][1]
    assert (final.as_numpy("num_input_tokens")[0], final.as_numpy("num_output_tokens")[0]) == (3, TOKENS)


def test_an_answer_not_streamed_arrives_whole(triton: RunningTriton) -> None:
    responses = stream(triton, "tell me more", streaming=False)
    assert [text(result) for _, result in responses] == ["tell me more tell me more "]
