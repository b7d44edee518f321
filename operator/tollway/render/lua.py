"""The gateway's Lua programs, as Envoy's Lua filter runs them (inline source code).

The request program is the constant code in templates/gateway.lua, preceded by the data table `T` that
`render.envoy.lua_data` computes from the gateway IR.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any


def _source(name: str) -> str:
    return (files("tollway.render") / "templates" / name).read_text()


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


def gateway_program(data: dict[str, Any]) -> str:
    """The request program: `local T = <data>` followed by the constant code."""
    return f"local T = {lua_literal(data)}\n\n" + _source("gateway.lua")


def token_headers_program() -> str:
    return _source("token_headers.lua")
