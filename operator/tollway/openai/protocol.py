"""The OpenAI wire format, in and out, as plain functions: a request read into a `Generation` (what to ask
the model), the model's pieces of text turned into OpenAI's response objects and stream chunks, and OpenAI's
error objects. No I/O: the server (`tollway.openai.server`) does that."""

from __future__ import annotations

import json
import struct
import time
import uuid
from base64 import b64encode
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

Kind = Literal["chat", "completion"]
"""What a generating model does (an embedding model has its own request and answer)."""
ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
READ_FIELDS = frozenset(
    {"model", "messages", "prompt", "max_tokens", "max_completion_tokens", "stream", "stream_options", "n"}
)
"""The top-level request fields a `Generation` carries in its own terms (n only ever 1)."""


class RequestError(ValueError):
    """A request the model side cannot serve: answered with OpenAI's error object and `status`."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param = status, param


@dataclass(frozen=True)
class ChatTemplate:
    """A chat template as Hugging Face's tokenizer_config.json holds it, with the special tokens it uses."""

    source: str
    bos_token: str = ""
    eos_token: str = ""

    @classmethod
    def from_tokenizer_config(cls, config: Mapping[str, Any]) -> ChatTemplate:
        template = config.get("chat_template")
        if isinstance(template, list):  # several named templates: the default one
            template = next((entry["template"] for entry in template if entry.get("name") == "default"), None)
        if not isinstance(template, str):
            raise ValueError("tokenizer_config.json has no chat_template")

        def token(name: str) -> str:
            value = config.get(name) or ""
            return str(value.get("content", "") if isinstance(value, dict) else value)

        return cls(template, token("bos_token"), token("eos_token"))

    def prompt(self, messages: list[dict[str, str]]) -> str:
        """The messages as the model's prompt, ending where the assistant's answer begins."""
        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        environment.globals["raise_exception"] = _raise
        try:
            return environment.from_string(self.source).render(
                messages=messages,
                add_generation_prompt=True,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except TemplateError as error:
            raise RequestError(f"the model's chat template refused the messages: {error}") from None


def _raise(message: str) -> None:
    raise TemplateError(message)


@dataclass(frozen=True)
class Generation:
    """What one OpenAI request asks the model for."""

    kind: Kind
    model: str
    """The `model` the client named (the gateway has already resolved and authorized it)."""
    prompt: str
    max_tokens: int
    stream: bool
    include_usage: bool
    """Streaming: whether the client asked for the final usage chunk (stream_options.include_usage)."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """The request's other top-level fields (temperature, seed, stop, tools, unknown ones too) as sent:
    what else may shape the answer (the response cache keys on them)."""


def _json_request(body: bytes) -> tuple[dict[str, Any], str]:
    """The request's JSON object and the `model` it names."""
    try:
        request = json.loads(body)
    except ValueError:
        raise RequestError("the body is not JSON") from None
    if not isinstance(request, dict):
        raise RequestError("the body must be a JSON object")
    model = request.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("model is required", param="model")
    return request, model


def read_request(
    kind: Kind, body: bytes, default_max_tokens: int, template: ChatTemplate | None = None
) -> Generation:
    """A /v1/chat/completions (`kind` chat, with the model's `template`) or /v1/completions body, checked."""
    request, model = _json_request(body)
    if request.get("n", 1) != 1:
        raise RequestError("only n = 1 is supported", param="n")
    stream = request.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError("stream must be true or false", param="stream")
    options = request.get("stream_options")
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise RequestError("stream_options must be an object", param="stream_options")
    prompt = _prompt(kind, request, template)
    max_tokens = _max_tokens(request, default_max_tokens)
    include_usage = options.get("include_usage", False) is True
    others = {name: value for name, value in request.items() if name not in READ_FIELDS}
    return Generation(kind, model, prompt, max_tokens, stream, include_usage, others)


def _prompt(kind: Kind, request: dict[str, Any], template: ChatTemplate | None) -> str:
    """What the model is asked: the chat messages through its template, or the completion's prompt."""
    if kind == "chat":
        if template is None:
            raise RequestError("this model has no chat template", status=500)
        return template.prompt(_messages(request.get("messages")))
    prompt = request.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise RequestError("prompt must be a string", param="prompt")
    return prompt


def _max_tokens(request: dict[str, Any], default: int) -> int:
    found = request.get("max_completion_tokens", request.get("max_tokens"))
    if found is None:
        return default
    if isinstance(found, bool) or not isinstance(found, int) or found < 1:
        raise RequestError("max_tokens must be a positive integer", param="max_tokens")
    return found


def _messages(messages: object) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty array", param="messages")
    found = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise RequestError(f"{where} needs a role: one of {', '.join(sorted(ROLES))}", param=where)
        found.append({"role": message["role"], "content": _text(message.get("content"), where)})
    return found


def _text(content: object, where: str) -> str:
    """A message's content: a string, or its text parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            part.get("text") for part in content if isinstance(part, dict) and part.get("type") == "text"
        ]
        if len(parts) == len(content) and all(isinstance(part, str) for part in parts):
            return "".join(str(part) for part in parts)
    raise RequestError(f"{where}.content must be a string or text parts", param=f"{where}.content")


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int | None = None
    """How many of the prompt's tokens came from a cache (OpenAI's prompt_tokens_details.cached_tokens): all
    of them for an answer replayed from the response cache, 0 for one a cache missed; None without a cache."""

    def as_object(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }
        if self.cached_tokens is not None:
            found["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        return found


@dataclass(frozen=True)
class Answer:
    """The envelope every object of one response shares."""

    kind: Kind
    model: str
    """What served it: MODEL@VERSION."""
    id: str
    created: int

    @classmethod
    def new(cls, kind: Kind, model: str) -> Answer:
        prefix = "chatcmpl" if kind == "chat" else "cmpl"
        return cls(kind, model, f"{prefix}-{uuid.uuid4().hex}", int(time.time()))

    def _object(self, name: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": name,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def whole(self, text: str, finish_reason: str, usage: Usage | None) -> dict[str, Any]:
        """The answer not streamed: chat.completion or text_completion (with no usage when nobody counted)."""
        if self.kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": text}}
            found = self._object("chat.completion", [{**choice, "finish_reason": finish_reason}])
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
            found = self._object("text_completion", [choice])
        return found if usage is None else {**found, "usage": usage.as_object()}

    def chunk(self, text: str, finish_reason: str | None = None, *, first: bool = False) -> dict[str, Any]:
        """One streamed piece (the first chat chunk also names the role; the last gives the reason)."""
        if self.kind == "chat":
            delta: dict[str, str] = {"role": "assistant", "content": text} if first else {"content": text}
            if finish_reason is not None and not text:
                delta = {}
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish_reason}
            return self._object("chat.completion.chunk", [choice])
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        return self._object("text_completion", [choice])

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        """The last chunk of a stream whose client asked for usage: no choices, the usage."""
        name = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return {**self._object(name, []), "usage": usage.as_object()}


def finish_reason(usage: Usage, max_tokens: int) -> str:
    """`length` when the answer used every token it was allowed, else `stop`."""
    return "length" if usage.completion_tokens >= max_tokens else "stop"


def event(data: Mapping[str, Any] | str) -> bytes:
    """One Server-Sent Event carrying `data` (an object as compact JSON, or a plain string such as [DONE])."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


def usage_comment(usage: Usage) -> bytes:
    """The usage so far as a Server-Sent Events comment, which SSE clients ignore: the gateway meters a stream
    by the last one it has seen (see the gateway's tokens.stream_usage), whether or not the client asked
    for a usage chunk, and charges a caller who leaves mid-stream what the last one said."""
    return f": usage {usage.prompt_tokens} {usage.completion_tokens}\n\n".encode()


@dataclass(frozen=True)
class EmbeddingRequest:
    """What a /v1/embeddings request asks for."""

    model: str
    texts: list[str]
    base64: bool
    """Whether to answer each vector as base64 of little-endian float32s (the official SDKs ask so)."""


def read_embedding_request(body: bytes) -> EmbeddingRequest:
    """A /v1/embeddings body, checked."""
    request, model = _json_request(body)
    texts = request.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(text, str) and text for text in texts):
        raise RequestError("input must be a non-empty string or array of them", param="input")
    encoding = request.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise RequestError("encoding_format must be float or base64", param="encoding_format")
    return EmbeddingRequest(model, texts, encoding == "base64")


def embeddings(model: str, vectors: list[list[float]], usage: Usage | None, base64: bool) -> dict[str, Any]:
    """The /v1/embeddings answer: a list of embeddings in input order (with no usage when nobody counted)."""
    data = [
        {"object": "embedding", "index": index, "embedding": _base64(vector) if base64 else vector}
        for index, vector in enumerate(vectors)
    ]
    found: dict[str, Any] = {"object": "list", "data": data, "model": model}
    if usage is not None:
        found["usage"] = {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens}
    return found


def _base64(vector: list[float]) -> str:
    return b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def error_object(message: str, status: int, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error object, with the type its SDKs map from the status."""
    kind = {400: "invalid_request_error", 404: "not_found_error", 429: "rate_limit_error"}.get(
        status, "api_error"
    )
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}
