"""The OpenAI side of a model: an HTTP server beside Triton (in the model's pod) that answers
/v1/chat/completions or /v1/completions by asking Triton over gRPC streaming on localhost (or
/v1/embeddings, one request for all the input texts), passing each piece
of text on to the client as Triton produces it (Server-Sent Events; nothing is held back), or the whole
answer when the client did not ask for a stream.

Token counts come from the model: Triton's vLLM backend reports them (`num_input_tokens`,
`num_output_tokens`) when asked (`return_num_input_tokens`, `return_num_output_tokens`); the server asks
when the model's metadata declares those tensors. Otherwise the model's own tokenizer counts the prompt and
the answer (`tollway.openai.tokens`); with neither, the answer carries no usage (never a guess, never zero),
and the gateway charges the request's estimate and counts it unreported.

With a response cache (--cache-store), a request that does not sample is looked up first and a complete
answer stored (`tollway.openai.store`); a hit is replayed the way a miss would have been answered, streamed
or whole, whichever way it was stored. The gateway may first ask whether an answer is held (PROBE_HEADER).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import tritonclient.grpc.aio as triton
from aiohttp import web
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

from tollway.openai.cache import Entry
from tollway.openai.protocol import (
    Answer,
    ChatTemplate,
    Generation,
    Kind,
    RequestError,
    Usage,
    embeddings,
    error_object,
    event,
    finish_reason,
    read_embedding_request,
    read_request,
    usage_comment,
)
from tollway.openai.store import CACHE_HEADER, CacheSettings, Lookup, ResponseCache
from tollway.openai.tokens import TokenCounter

log = logging.getLogger("tollway.openai")

ROUTES = {"chat": "/v1/chat/completions", "completion": "/v1/completions", "embedding": "/v1/embeddings"}
VERSION_HEADER = "x-tollway-model-version"
"""The version the gateway resolved the request's `model` to (an alias, `latest`, or `MODEL@N`); the gateway
drops the header from what clients send."""
PRIORITY_HEADER = "x-tollway-priority"
"""The caller's tier's Triton priority level, from the gateway (which drops the header from what clients
send)."""
PROBE_HEADER = "x-tollway-cache-probe"
"""From the gateway, `1`: only say whether the cache holds the answer (204: it does; 404: it does not), so
that the gateway can leave a hit out of the tier's token limits when the tier says so. Nothing is
generated. The gateway drops the header from what clients send."""
PROBE_MARGIN_S = 10
"""A probe finds no answer that expires within this many seconds: the request it precedes would miss."""
COUNT_INPUTS = ("return_num_input_tokens", "return_num_output_tokens")
COUNT_OUTPUTS = ("num_input_tokens", "num_output_tokens")


@dataclass(frozen=True)
class ModelSide:
    """The model this server answers for, in spec.model.openai's terms."""

    name: str
    kind: Kind | Literal["embedding"]
    default_max_tokens: int
    text_input: str = "text_input"
    text_output: str = "text_output"
    max_tokens_input: str = "max_tokens"
    stream_input: str = "stream"
    embedding_output: str = "embedding"
    template: ChatTemplate | None = None
    tokenizer: TokenCounter | None = None
    """Counts tokens for a model that does not report them."""


@dataclass
class RunningCount:
    """A stream's usage so far: `add` counts a piece of the answer and returns the usage comment to send after
    it (nothing when not `enabled`)."""

    prompt_tokens: int
    count: Callable[[str], int]
    enabled: bool = True
    completion_tokens: int = 0

    def add(self, text: str) -> bytes:
        if not self.enabled:
            return b""
        self.completion_tokens += self.count(text) if text else 0
        return usage_comment(Usage(self.prompt_tokens, self.completion_tokens))


@dataclass
class Piece:
    """What one of Triton's responses carried."""

    text: str
    version: str
    usage: Usage | None


class OpenAIServer:
    """Made inside the event loop that serves it (gRPC's asyncio channel belongs to one loop)."""

    def __init__(self, side: ModelSide, triton_address: str, cache: ResponseCache | None = None) -> None:
        self.side = side
        self.client = triton.InferenceServerClient(triton_address)
        self.cache = cache
        self.counted: bool | None = None
        """Whether the model reports its token counts: read from its metadata on the first request."""
        self.batched = False
        """Whether the model batches (max_batch_size > 0): each tensor then has a leading batch dimension,
        one row per request (per text, for embeddings)."""

    @classmethod
    async def application(
        cls, side: ModelSide, triton_address: str, cache: CacheSettings | None = None
    ) -> web.Application:
        return cls(
            side, triton_address, None if cache is None else ResponseCache(cache, cache.open())
        ).routes()

    def routes(self) -> web.Application:
        app = web.Application()
        app.router.add_post(
            ROUTES[self.side.kind], self.embed if self.side.kind == "embedding" else self.answer
        )
        app.router.add_get("/healthz", self.health)
        app.on_cleanup.append(self._close)
        return app

    async def _close(self, _: web.Application) -> None:
        await self.client.close()
        if self.cache is not None:
            await self.cache.close()

    async def health(self, _: web.Request) -> web.Response:
        ready = await self.client.is_model_ready(self.side.name)
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    async def embed(self, request: web.Request) -> web.Response:
        """/v1/embeddings: one Triton request for every input text, vectors in input order."""
        try:
            asked = read_embedding_request(await request.read())
            await self._read_metadata()
            texts = np.array([text.encode() for text in asked.texts], dtype=np.object_)
            rows = len(asked.texts)
            result = await self.client.infer(
                self.side.name,
                [*self._tensors([(self.side.text_input, "BYTES", texts)], rows), *self._count_inputs(rows)],
                model_version=request.headers.get(VERSION_HEADER, ""),
                outputs=self._outputs(self.side.embedding_output),
            )
        except (RequestError, InferenceServerException) as error:
            return _refusal(error, self._passed_by(request).headers())
        vectors = result.as_numpy(self.side.embedding_output).reshape(len(asked.texts), -1).tolist()
        usage = self._piece(result, text_output=False).usage  # a batching model's counts: a row a text
        if usage is None and self.side.tokenizer is not None:
            usage = Usage(sum(self.side.tokenizer.count(text) for text in asked.texts), 0)
        model = f"{self.side.name}@{result.get_response().model_version}"
        return web.json_response(
            embeddings(model, vectors, usage, asked.base64), headers=self._passed_by(request).headers()
        )

    async def answer(self, request: web.Request) -> web.StreamResponse:
        if self.side.kind == "embedding":
            raise AssertionError("an embedding model answers /v1/embeddings only")
        lookup = self._passed_by(request)  # until it is looked up
        try:
            generation = read_request(
                self.side.kind, await request.read(), self.side.default_max_tokens, self.side.template
            )
            lookup = await self._look_up(request, generation)
            if request.headers.get(PROBE_HEADER) == "1":
                return web.Response(status=204 if self._will_hold(lookup) else 404, headers=lookup.headers())
            if lookup.entry is not None:
                return await self._replay(request, generation, lookup, lookup.entry)
            pieces = self._generate(
                generation, request.headers.get(VERSION_HEADER, ""), _priority(request.headers)
            )
            if not generation.stream:
                return await self._whole(generation, pieces, lookup)
            first = await anext(pieces)  # a failure before the first piece is still an error status
        except (RequestError, InferenceServerException) as error:
            return _refusal(error, lookup.headers())
        except StopAsyncIteration:
            body = error_object("the model answered nothing", 502)
            return web.json_response(body, status=502, headers=lookup.headers())
        try:
            return await self._stream(request, generation, first, pieces, lookup)
        finally:  # the client may have left mid-stream: Triton stops generating for it
            await pieces.aclose()

    async def _look_up(self, request: web.Request, generation: Generation) -> Lookup:
        """What the cache has for the request."""
        if self.cache is None or request.headers.get(CACHE_HEADER) == "off":
            return self._passed_by(request)
        return await self.cache.look_up(self.side.name, request.headers.get(VERSION_HEADER, ""), generation)

    def _will_hold(self, lookup: Lookup) -> bool:
        """Whether a hit's answer will still be there for the request that follows the gateway's probe: not
        one about to expire."""
        if self.cache is None or lookup.entry is None:
            return False
        return lookup.age + PROBE_MARGIN_S < self.cache.settings.ttl_seconds

    def _passed_by(self, request: web.Request) -> Lookup:
        """A request the cache is not asked about: one refused before it could be, an embedding, or one whose
        tier opted out (without a cache: nothing to say)."""
        if self.cache is None:
            return Lookup(None)
        return Lookup("off" if request.headers.get(CACHE_HEADER) == "off" else "skip")

    async def _keep(
        self, lookup: Lookup, text: list[str], version: str, usage: Usage | None, reason: str
    ) -> None:
        """Stores a complete answer that the cache missed."""
        if self.cache is not None:
            await self.cache.keep(lookup, text, version, usage, reason)

    async def _whole(
        self, generation: Generation, pieces: AsyncGenerator[Piece], lookup: Lookup
    ) -> web.Response:
        text, version, usage = [], "", None
        async for piece in pieces:
            text.append(piece.text)
            version, usage = piece.version or version, piece.usage or usage
        answer = Answer.new(generation.kind, f"{self.side.name}@{version}")
        usage = self._counted(generation, "".join(text), usage)
        reason = finish_reason(usage, generation.max_tokens) if usage else "stop"
        await self._keep(lookup, [piece for piece in text if piece], version, usage, reason)
        body = answer.whole("".join(text), reason, lookup.usage(usage))
        return web.json_response(body, headers=lookup.headers())

    async def _replay(
        self, request: web.Request, generation: Generation, lookup: Lookup, entry: Entry
    ) -> web.StreamResponse:
        """A hit, answered as a miss would have been: whole, or streamed a chunk per stored piece with the
        same usage comments."""
        answer = Answer.new(generation.kind, f"{self.side.name}@{entry.version}")
        usage = lookup.usage(entry.usage)
        if not generation.stream:
            body = answer.whole("".join(entry.pieces), entry.finish_reason, usage)
            return web.json_response(body, headers=lookup.headers())
        response = await _open_stream(request, lookup.headers())
        so_far = self._running(generation, counted=entry.usage is not None)
        first, *rest = entry.pieces
        await response.write(event(answer.chunk(first, first=True)) + so_far.add(first))
        for piece in rest:
            await response.write(event(answer.chunk(piece)) + so_far.add(piece))
        await _finish(response, answer, generation, usage, entry.finish_reason)
        return response

    def _running(self, generation: Generation, counted: bool) -> RunningCount:
        """What a stream has produced so far, for its usage comments: counted by the model's tokenizer, or,
        when the model reports its counts (`counted`) only at the end, one token per piece (a streaming LLM
        backend sends each decoding step's token as it comes) and no prompt yet; nothing when nobody
        counts."""
        counter = self.side.tokenizer
        if counter is not None:
            return RunningCount(counter.count(generation.prompt), counter.count)
        return RunningCount(0, lambda _: 1, enabled=counted)

    def _counted(self, generation: Generation, text: str, reported: Usage | None) -> Usage | None:
        """The model's counts, else its tokenizer's; None (and a warning) when there are neither."""
        if reported is not None:
            return reported
        if self.side.tokenizer is not None:
            return self.side.tokenizer.usage(generation.prompt, text)
        log.warning(
            "the model reports no token counts and has no tokenizer.json: the answer carries no usage"
        )
        return None

    async def _stream(
        self,
        request: web.Request,
        generation: Generation,
        first: Piece,
        pieces: AsyncGenerator[Piece],
        lookup: Lookup,
    ) -> web.StreamResponse:
        response = await _open_stream(request, lookup.headers())
        answer = Answer.new(generation.kind, f"{self.side.name}@{first.version}")
        usage, text = first.usage, [first.text]
        so_far = self._running(generation, counted=bool(self.counted))
        await response.write(event(answer.chunk(first.text, first=True)) + so_far.add(first.text))
        try:
            async for piece in pieces:
                usage = piece.usage or usage
                if piece.text:
                    text.append(piece.text)
                    await response.write(event(answer.chunk(piece.text)) + so_far.add(piece.text))
        except InferenceServerException as error:  # the status is sent: the stream ends without [DONE]
            log.warning("Triton failed mid-stream: %s", error.message())
            return response
        usage = self._counted(generation, "".join(text), usage)
        reason = finish_reason(usage, generation.max_tokens) if usage else "stop"
        # the model has finished and the client has every piece: stored before the closing events, so that
        # a client that has read [DONE] finds the answer stored (and a replica it asks next hits it)
        await self._keep(lookup, text, first.version, usage, reason)
        await _finish(response, answer, generation, lookup.usage(usage), reason)
        return response

    async def _read_metadata(self) -> None:
        """Whether the model reports its token counts, from the tensors it declares, and whether it batches,
        from its config (once)."""
        if self.counted is None:
            metadata = await self.client.get_model_metadata(self.side.name, as_json=True)
            declared = {tensor["name"] for tensor in metadata["inputs"] + metadata["outputs"]}
            config = await self.client.get_model_config(self.side.name, as_json=True)
            self.batched = int(config["config"].get("max_batch_size", 0)) > 0
            self.counted = set(COUNT_INPUTS + COUNT_OUTPUTS) <= declared

    def _tensors(
        self, values: list[tuple[str, str, np.ndarray[Any, Any]]], rows: int = 1
    ) -> list[InferInput]:
        """Inputs of (name, datatype, data); for a batching model, `rows` rows of each (one per text)."""
        found = []
        for name, datatype, data in values:
            shaped = data.reshape(rows, -1) if self.batched else data
            tensor = InferInput(name, list(shaped.shape), datatype)
            tensor.set_data_from_numpy(shaped)
            found.append(tensor)
        return found

    def _count_inputs(self, rows: int = 1) -> list[InferInput]:
        """The inputs that ask the model for its counts (none when it declares none)."""
        asked = np.array([True] * (rows if self.batched else 1), dtype=bool)
        return self._tensors([(name, "BOOL", asked) for name in COUNT_INPUTS if self.counted], rows)

    def _outputs(self, answer: str) -> list[InferRequestedOutput]:
        """The answer's output, and the counts when the model reports them."""
        return [InferRequestedOutput(name) for name in (answer, *(COUNT_OUTPUTS if self.counted else ()))]

    async def _generate(self, generation: Generation, version: str, priority: int) -> AsyncGenerator[Piece]:
        """Triton's responses to the generation, as pieces, as they come."""
        await self._read_metadata()

        async def one_request() -> AsyncIterator[dict[str, Any]]:
            yield {
                "model_name": self.side.name,
                "model_version": version,
                "inputs": self._inputs(generation),
                "outputs": self._outputs(self.side.text_output),
                "priority": priority,
            }

        responses = self.client.stream_infer(one_request())
        try:
            async for result, error in responses:
                if error is not None:
                    raise error
                yield self._piece(result)
        finally:  # ends Triton's request when the answer is not wanted any more
            responses.cancel()

    def _inputs(self, generation: Generation) -> list[InferInput]:
        side = self.side
        values: list[tuple[str, str, np.ndarray[Any, Any]]] = [
            (side.text_input, "BYTES", np.array([generation.prompt.encode()], dtype=np.object_)),
            (side.max_tokens_input, "INT32", np.array([generation.max_tokens], dtype=np.int32)),
            (side.stream_input, "BOOL", np.array([generation.stream], dtype=bool)),
        ]
        return [*self._tensors(values), *self._count_inputs()]

    def _piece(self, result: Any, text_output: bool = True) -> Piece:
        texts = result.as_numpy(self.side.text_output) if text_output else None
        text = "" if texts is None else "".join(_decoded(value) for value in texts.reshape(-1))
        counts = [result.as_numpy(name) for name in COUNT_OUTPUTS] if self.counted else [None, None]
        usage = None
        if all(count is not None and count.size for count in counts):
            usage = Usage(*(int(count.sum()) for count in counts if count is not None))
        return Piece(text, result.get_response().model_version, usage)


async def _open_stream(request: web.Request, headers: Mapping[str, str]) -> web.StreamResponse:
    """An event stream's response, its headers sent."""
    response = web.StreamResponse(
        headers={"content-type": "text/event-stream", "cache-control": "no-cache", **headers}
    )
    await response.prepare(request)
    return response


async def _finish(
    response: web.StreamResponse, answer: Answer, generation: Generation, usage: Usage | None, reason: str
) -> None:
    """A stream's closing events: the finish reason with the final usage comment, the usage chunk when the
    client asked for it, [DONE]."""
    final = usage_comment(usage) if usage is not None else b""
    await response.write(event(answer.chunk("", reason)) + final)
    if generation.include_usage and usage is not None:
        await response.write(event(answer.usage_chunk(usage)))
    await response.write(event("[DONE]"))
    await response.write_eof()


def _priority(headers: Mapping[str, str]) -> int:
    """The tier's Triton priority level the gateway sent; 0 (the model's default) without one."""
    value = headers.get(PRIORITY_HEADER, "")
    return int(value) if value.isdigit() else 0


def _refusal(error: RequestError | InferenceServerException, headers: Mapping[str, str]) -> web.Response:
    """OpenAI's error object for a request refused here (its status) or by Triton (502)."""
    if isinstance(error, RequestError):
        body = error_object(str(error), error.status, error.param)
        return web.json_response(body, status=error.status, headers=headers)
    log.warning("Triton refused a request: %s", error.message())
    body = error_object(f"the model failed: {error.message()}", 502)
    return web.json_response(body, status=502, headers=headers)


def _decoded(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def serve(
    side: ModelSide, triton_address: str, host: str, port: int, cache: CacheSettings | None = None
) -> None:
    """Run until stopped (with a response cache when `cache` says so)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = {"message": "serving the OpenAI API", "model": side.name, "port": port}
    if cache is not None:
        started["cache"] = cache.store
    log.info(json.dumps(started))
    web.run_app(OpenAIServer.application(side, triton_address, cache), host=host, port=port, print=None)
