"""The gateway's Lua programs, as Envoy's Lua filters run them (inline source code).

The gateway runs two programs, one filter each, with the request-count limits between them: gateway.lua
reads a request's headers (caller, model, route; and the response on its way back), body.lua its body
(Triton's reading of it, the tier's priority, the token reservation); where a model scales to zero, a third,
hold.lua, keeps its requests while it has no ready replica. Envoy's Lua filter takes one inline chunk, so
each program is bundled from templates/:

    local T = <the data `render.envoy.lua_data` computes from the gateway IR (body.lua: its tiers and models)>
    package.preload["tollway.access"] = function(...)
    <access.lua>
    end
    ... (one for each module the program uses)
    <gateway.lua or body.lua>

Each module file is a Lua module that reads neither `T` nor the clock (all but `stream` are pure: `stream`
acts on the handle it is given), so tests load one on its own with `module_source`. The shims `require`
them: Envoy opens LuaJIT's standard libraries, `package` included, in each worker's Lua state. Each module
runs in a function of its own, which keeps every chunk far below LuaJIT's 200 locals and 60 upvalues per
function.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

GATEWAY_MODULES = ("access", "models", "protobuf", "sample", "stream", "tokens")
BODY_MODULES = ("json", "models", "prompt", "protobuf", "sample", "stream", "tokens")
HOLD_MODULES = ("models", "stream", "tokens")


def _source(name: str) -> str:
    return (files("tollway.render") / "templates" / name).read_text()


def module_source(name: str) -> str:
    """The source of the pure module `tollway.<name>`: a chunk that returns the module's table."""
    return _source(f"{name}.lua")


def lua_literal(value: Any) -> str:
    """A Lua expression for a value made of dicts, lists, strings, ints, bools and None."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        escaped = "".join(
            char
            if 32 <= ord(char) < 127 and char not in '"\\'
            else "".join(f"\\{byte:03d}" for byte in char.encode())  # 3 digits: a digit may follow
            for char in value
        )
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "{" + ", ".join(lua_literal(item) for item in value) + "}"
    if isinstance(value, dict):
        return (
            "{"
            + ", ".join(f"[{lua_literal(key)}] = {lua_literal(item)}" for key, item in value.items())
            + "}"
        )
    raise TypeError(f"no Lua literal for {type(value).__name__}")


def _program(data: dict[str, Any], modules: tuple[str, ...], shim: str) -> str:
    """`local T = <data>`, the modules as preloaded packages, then the shim."""
    preloads = "".join(
        f'package.preload["tollway.{name}"] = function(...)\n{module_source(name)}end\n\n' for name in modules
    )
    return f"local T = {lua_literal(data)}\n\n" + preloads + _source(shim)


def gateway_program(data: dict[str, Any]) -> str:
    """The program that reads a request's headers, and its response."""
    return _program(data, GATEWAY_MODULES, "gateway.lua")


def body_program(data: dict[str, Any]) -> str:
    """The program that reads a request's body, once the request-count limits let it through."""
    return _program(data, BODY_MODULES, "body.lua")


def hold_program(data: dict[str, Any]) -> str:
    """The program that holds a request for a model without a ready replica (render.envoy.hold_data)."""
    return _program(data, HOLD_MODULES, "hold.lua")


def token_headers_program() -> str:
    return _source("token_headers.lua")
