"""The gateway's Lua under LuaJIT (the VM Envoy embeds), from pytest: its pure modules loaded one at a time,
and the whole program Envoy runs, driven through a fake `handle` that records what the program did to it.

Lua strings are bytes; the runtime maps them to Python `str` one byte a character (latin-1), so JSON and
protobuf bodies go in and come out unchanged: `lua_text(bytes)` and `from_lua(str)` convert.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lupa import luajit21

from tollway.render.envoy import body_data
from tollway.render.lua import (
    BODY_MODULES,
    GATEWAY_MODULES,
    body_program,
    gateway_program,
    hold_program,
    module_source,
)


def runtime() -> Any:
    return luajit21.LuaRuntime(encoding="latin-1", unpack_returned_tuples=True)


class Module:
    """The pure module `tollway.<name>`, loaded on its own in a runtime of its own. Its functions take Python
    values (dicts and lists become Lua tables) and return what Lua returns: one value, or a tuple of several.
    """

    def __init__(self, name: str) -> None:
        self.lua = runtime()
        # the modules it may require, as the programs preload them
        preload = self.lua.globals().package.preload
        for other in sorted(set(GATEWAY_MODULES) | set(BODY_MODULES)):
            preload[f"tollway.{other}"] = self.lua.execute(f"return function(...) {module_source(other)} end")
        self.table = self.lua.execute(module_source(name))

    def __getattr__(self, function: str) -> Any:
        found = self.table[function]
        if found is None:
            raise AttributeError(function)
        return lambda *args: found(*(self.lua_value(arg) for arg in args))

    def lua_value(self, value: Any) -> Any:
        return self.lua.table_from(value, recursive=True) if isinstance(value, dict | list) else value


def lua_text(data: bytes) -> str:
    return data.decode("latin-1")


def from_lua(text: str) -> bytes:
    return text.encode("latin-1")


def python(value: Any) -> Any:
    """A Lua table as a dict (recursively); anything else as it is."""
    if hasattr(value, "items"):
        return {key: python(item) for key, item in value.items()}
    return value


class Fake:
    """An Envoy object as Lua sees it: a table whose functions call this object's `METHODS` (Lua's
    `object:method(...)` passes the table first; the Python method gets the rest)."""

    METHODS: tuple[str, ...] = ()

    def __init__(self, lua: Any) -> None:
        self.lua = lua
        self.table = lua.table_from({name: self._method(name) for name in self.METHODS})

    def _method(self, name: str) -> Any:
        method = getattr(self, name)
        return lambda _table, *args: method(*args)

    def scoped(self, valid: Callable[[], bool]) -> Any:
        """A wrapper that, like Envoy's, fails once `valid()` is false (after the script yielded)."""

        def checked(name: str) -> Any:
            method = getattr(self, name)

            def call(_table: Any, *args: Any) -> Any:
                if not valid():
                    raise RuntimeError(f"object used outside of proper scope ({type(self).__name__}.{name})")
                return method(*args)

            return call

        return self.lua.table_from({name: checked(name) for name in self.METHODS})


class Headers(Fake):
    METHODS = ("get", "replace", "remove")

    def __init__(self, lua: Any, values: dict[str, str]) -> None:
        super().__init__(lua)
        self.values = dict(values)

    def get(self, name: str) -> str | None:
        return self.values.get(name)

    def replace(self, name: str, value: str) -> None:
        self.values[name] = value

    def remove(self, name: str) -> None:
        self.values.pop(name, None)


class Body(Fake):
    METHODS = ("length", "getBytes", "setBytes")

    def __init__(self, lua: Any, data: bytes) -> None:
        super().__init__(lua)
        self.data = data

    def length(self) -> int:
        return len(self.data)

    def getBytes(self, start: int, length: int) -> str:  # noqa: N802 (Envoy's name)
        return lua_text(self.data[start : start + length])

    def setBytes(self, text: str) -> None:  # noqa: N802
        self.data = from_lua(text)


class DynamicMetadata(Fake):
    METHODS = ("get", "set")

    def __init__(self, lua: Any, namespaces: dict[str, dict[str, Any]]) -> None:
        super().__init__(lua)
        self.namespaces = namespaces

    def get(self, namespace: str) -> Any:
        found = self.namespaces.get(namespace)
        return None if found is None else self.lua.table_from(found, recursive=True)

    def set(self, namespace: str, key: str, value: Any) -> None:
        self.namespaces.setdefault(namespace, {})[key] = value


@dataclass
class Certificate:
    """The client certificate of an mTLS connection."""

    validated: bool = True
    uri_sans: list[str] = field(default_factory=list)
    dns_sans: list[str] = field(default_factory=list)
    subject: str = "CN=client"


class Connection(Fake):
    METHODS = (
        "peerCertificateValidated",
        "uriSanPeerCertificate",
        "dnsSansPeerCertificate",
        "subjectPeerCertificate",
    )

    def __init__(self, lua: Any, certificate: Certificate) -> None:
        super().__init__(lua)
        self.certificate = certificate

    def peerCertificateValidated(self) -> bool:  # noqa: N802
        return self.certificate.validated

    def uriSanPeerCertificate(self) -> Any:  # noqa: N802
        return self.lua.table_from(self.certificate.uri_sans)

    def dnsSansPeerCertificate(self) -> Any:  # noqa: N802
        return self.lua.table_from(self.certificate.dns_sans)

    def subjectPeerCertificate(self) -> str:  # noqa: N802
        return self.certificate.subject


class StreamInfo(Fake):
    METHODS = (
        "dynamicMetadata",
        "downstreamSslConnection",
        "downstreamLocalAddress",
        "downstreamRemoteAddress",
    )

    def __init__(
        self,
        lua: Any,
        metadata: DynamicMetadata,
        connection: Connection | None,
        local_address: str,
        remote_address: str,
    ) -> None:
        super().__init__(lua)
        self.metadata = metadata
        self.connection = connection
        self.local_address = local_address
        self.remote_address = remote_address
        self.in_scope: Callable[[], bool] = lambda: True
        """Whether a wrapper handed out now is still valid: set per wrapper by the handle (see scoped)."""

    def dynamicMetadata(self) -> Any:  # noqa: N802
        return self.metadata.scoped(self.in_scope)

    def downstreamSslConnection(self) -> Any:  # noqa: N802
        return None if self.connection is None else self.connection.table

    def downstreamLocalAddress(self) -> str:  # noqa: N802
        return self.local_address

    def downstreamRemoteAddress(self) -> str:  # noqa: N802
        """The client's address, as Envoy's trusted-proxy detection left it."""
        return self.remote_address


class RouteMetadata(Fake):
    METHODS = ("get",)

    def __init__(self, lua: Any, values: dict[str, Any]) -> None:
        super().__init__(lua)
        self.values = values

    def get(self, key: str) -> Any:
        return self.values.get(key)


@dataclass
class ProgramReply:
    """A local reply the program made with handle:respond."""

    status: int
    headers: dict[str, str]
    body: str


class Handle(Fake):
    """Envoy's stream handle as the gateway uses it; afterwards it holds what the program did."""

    METHODS = (
        "headers",
        "body",
        "bodyChunks",
        "streamInfo",
        "metadata",
        "respond",
        "logErr",
        "clearRouteCache",
        "timestamp",
        "httpCall",
    )

    def __init__(
        self,
        lua: Any,
        *,
        headers: dict[str, str],
        body: bytes | None,
        route: dict[str, Any],
        metadata: dict[str, dict[str, Any]],
        certificate: Certificate | None,
        local_address: str,
        remote_address: str = "192.0.2.10:41000",
        chunks: list[bytes] | None = None,
        clock: list[int] | None = None,
        leave_after: int | None = None,
    ) -> None:
        super().__init__(lua)
        self.leave_after = leave_after
        """The client goes after this many chunks: Envoy ends the script there (here: an error)."""
        self.chunks = list(chunks or [])
        """A streamed body, as the pieces bodyChunks() hands over one by one."""
        self.clock = list(clock or [0])
        """What timestamp() returns, call after call (the last value from then on)."""
        self.chunks_read = 0
        self.request_headers = Headers(lua, headers)
        self.request_body = None if body is None else Body(lua, body)
        self.route = RouteMetadata(lua, route)
        self.dynamic = DynamicMetadata(lua, metadata)
        connection = None if certificate is None else Connection(lua, certificate)
        self.info = StreamInfo(lua, self.dynamic, connection, local_address, remote_address)
        self.reply: ProgramReply | None = None
        self.calls: list[tuple[str, dict[str, str], str, int]] = []
        self.answer_call: Callable[[str, dict[str, str], str], tuple[Any, ...]] = lambda *_: (
            503,
            "no upstream",
        )
        self.errors: list[str] = []
        self.route_cache_cleared = 0
        self.reading_headers = False
        """True while the headers program runs: it must never ask for the body."""
        self.yields = 0
        """How many times the script waited (for the body): wrappers from before are out of scope."""
        self.after_headers: dict[str, Any] = {}
        """The dynamic metadata the headers program left: what the request-count filters after it read."""

    def _still(self) -> Callable[[], bool]:
        """Valid until the script next yields: Envoy's wrappers (headers, stream info, metadata) taken
        before a call that waits for the body are out of scope after it."""
        taken = self.yields
        return lambda: self.yields == taken

    def headers(self) -> Any:
        return self.request_headers.scoped(self._still())

    def body(self) -> Any:
        assert not self.reading_headers, "the headers program asked for the body"
        self.yields += 1  # Envoy yields the script until the body is in
        return None if self.request_body is None else self.request_body.table

    def bodyChunks(self) -> Any:  # noqa: N802
        """Each chunk as it arrives (the script waits between them, so wrappers go out of scope), never
        the whole body at once."""
        assert not self.reading_headers, "the headers program asked for the body"

        def next_chunk(*_: Any) -> Any:  # called as a generic for calls it: (state, control)
            self.yields += 1
            if self.chunks_read == self.leave_after:
                raise ConnectionResetError("the client left")
            if self.chunks_read == len(self.chunks):
                return None
            self.chunks_read += 1
            return Body(self.lua, self.chunks[self.chunks_read - 1]).table

        return next_chunk

    def timestamp(self) -> int:
        """Milliseconds, as Envoy's handle:timestamp() gives them: the clock's next reading."""
        return self.clock.pop(0) if len(self.clock) > 1 else self.clock[0]

    def streamInfo(self) -> Any:  # noqa: N802
        still = self._still()
        self.info.in_scope = still
        return self.info.scoped(still)

    def metadata(self) -> Any:
        return self.route.table

    def respond(self, headers: Any, body: str) -> None:
        values = python(headers)
        self.reply = ProgramReply(int(values.pop(":status")), values, body)

    def logErr(self, message: str) -> None:  # noqa: N802
        self.errors.append(message)

    def httpCall(self, cluster: str, headers: Any, body: str, timeout_ms: int) -> Any:  # noqa: N802
        """A call the script waits for (it yields): answered by `answer_call(cluster, headers, body)`, which
        returns (status, body), or (status, body, headers) for an answer with headers; each call is kept in
        `calls`."""
        sent = python(headers)
        self.calls.append((cluster, sent, body, timeout_ms))
        self.yields += 1
        status, reply, *more = self.answer_call(cluster, sent, body)
        return self.lua.table_from({":status": str(status), **(more[0] if more else {})}), reply

    def clearRouteCache(self) -> None:  # noqa: N802
        self.route_cache_cleared += 1

    # What the program left behind.
    @property
    def answer(self) -> tuple[int, str] | None:
        """The status and message of the local reply the program made, if it made one."""
        return None if self.reply is None else (self.reply.status, self.reply.body)

    @property
    def header_values(self) -> dict[str, str]:
        return self.request_headers.values

    @property
    def body_bytes(self) -> bytes | None:
        return None if self.request_body is None else self.request_body.data

    @property
    def tollway(self) -> dict[str, Any]:
        """The dynamic metadata the program set for the ratelimit filters and the access log."""
        return self.dynamic.namespaces.get("tollway", {})


class GatewayProgram:
    """The gateway's two programs as Envoy runs them on a request, on a clock the test sets: the headers
    program (`gateway_program(data)`), then, unless it answered, the body program (`body_program`); and the
    headers program on a response. Both run in one Lua state here (the modules they share are pure)."""

    def __init__(self, data: dict[str, Any], now: int) -> None:
        self.lua = runtime()
        found = self.lua.globals()
        self.lua.execute(gateway_program(data))
        self.on_headers, self.on_response = found.envoy_on_request, found.envoy_on_response
        self.lua.execute(body_program(body_data(data)))
        self.on_body = found.envoy_on_request
        self.now = now
        found.os.time = lambda: self.now
        self.answer_call: Callable[[str, dict[str, str], str], tuple[int, str]] = lambda *_: (
            503,
            "no upstream",
        )
        """What the upstream of a handle:httpCall answers: (status, body), as Envoy hands them to the script
        (a failed call: Envoy's own 503)."""

    def handle(
        self,
        headers: dict[str, str],
        body: bytes | None = None,
        *,
        route: dict[str, Any] | None = None,
        metadata: dict[str, dict[str, Any]] | None = None,
        certificate: Certificate | None = None,
        local_address: str = "127.0.0.1:8080",
        remote_address: str = "192.0.2.10:41000",
        chunks: list[bytes] | None = None,
        clock: list[int] | None = None,
        leave_after: int | None = None,
    ) -> Handle:
        handle = Handle(
            self.lua,
            headers=headers,
            body=body,
            route=route or {},
            metadata=metadata or {},
            certificate=certificate,
            local_address=local_address,
            remote_address=remote_address,
            chunks=chunks,
            clock=clock,
            leave_after=leave_after,
        )
        handle.answer_call = self.answer_call
        return handle

    def request(self, headers: dict[str, str], body: bytes | None = None, **context: Any) -> Handle:
        handle = self.handle(headers, body, **context)
        handle.reading_headers = True
        self.on_headers(handle.table)
        handle.reading_headers = False
        handle.after_headers = dict(handle.tollway)
        if handle.reply is None:
            self.on_body(handle.table)
        return handle

    def response(self, headers: dict[str, str], body: bytes | None = None, **context: Any) -> Handle:
        handle = self.handle(headers, body, **context)
        self.on_response(handle.table)
        return handle


class HoldProgram:
    """hold.lua as Envoy runs it on a request that the programs before it routed (x-tollway-cluster), with
    the clock and the answers of its calls given by the test. One Lua state: what a worker remembers between
    requests is remembered here too."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.lua = runtime()
        self.lua.execute(hold_program(data))
        self.on_request = self.lua.globals().envoy_on_request

    def request(
        self,
        cluster: str,
        answer_call: Callable[[str, dict[str, str], str], tuple[Any, ...]],
        clock: list[int],
        metadata: dict[str, str] | None = None,
    ) -> Handle:
        """`metadata`: what the programs before it set (default: an inference request of tier pro, which
        counts)."""
        handle = Handle(
            self.lua,
            headers={":path": "/v2/models/chat/infer", "x-tollway-cluster": cluster},
            body=None,
            route={},
            metadata={
                "tollway": {"model": "chat", "inference": "1", "tier": "pro"}
                if metadata is None
                else metadata
            },
            certificate=None,
            local_address="127.0.0.1:8080",
            clock=clock,
        )
        handle.answer_call = answer_call
        self.on_request(handle.table)
        return handle
