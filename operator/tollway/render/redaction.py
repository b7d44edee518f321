"""A tier's redaction patterns (regular expressions of a bounded kind) as the Lua patterns the gateway runs.

Lua's patterns have no alternation or groups, and Envoy's Lua has no other regex engine; what they do have
(classes, `* + ? -`, anchors) covers the patterns that find secrets and identifiers: a prefix, then runs of
a class. So a tier writes ordinary regular-expression syntax for that kind, and anything outside it is
refused with a reason (the tier's conditions show it) rather than read differently than meant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ESCAPED_CLASSES = {"d": "%d", "D": "%D", "w": "[%w_]", "W": "[^%w_]", "s": "%s", "S": "%S"}
"""Regex escapes → Lua classes (`\\w` takes the underscore, Lua's `%w` does not)."""
IN_CLASS = {"d": "%d", "w": "%w_", "s": "%s"}
"""The same inside brackets (`[\\w.]`), where only the positive classes fit."""
LUA_MAGIC = set("^$()%.[]*+-?")
MOST_REPEATS = 64
MOST_OPTIONAL = 8
"""`?` each double what a failing match may try: a bounded number of them per pattern."""
PROMPT_OPTIONAL = 2
"""The same for a prompt check, which runs on every prompt of its tier (redaction, on samples only)."""


class UnsupportedPattern(ValueError):
    """A pattern the gateway cannot run as written; the message says what to change."""


@dataclass(frozen=True)
class _Part:
    """One atom of a pattern with its quantifier, or an anchor (no atom)."""

    at: int
    written: str
    """The atom as the regular expression writes it ("" for an anchor)."""
    atom: str
    """Its Lua form."""
    pieces: tuple[str, ...]
    """The atom and its quantifier in Lua (none for `{0}`)."""

    @property
    def unbounded(self) -> bool:
        return bool(self.pieces) and self.pieces[-1] in (self.atom + "*", self.atom + "+")

    @property
    def optional(self) -> bool:
        return self.pieces == (self.atom + "?",)


def _parts(regex: str) -> list[_Part]:
    """`regex` read atom by atom, in the syntax redaction accepts; UnsupportedPattern otherwise."""
    parts: list[_Part] = []
    at = 0
    if regex.startswith("^"):
        parts.append(_Part(0, "", "", ("^",)))
        at = 1
    while at < len(regex):
        char = regex[at]
        if char in "|()":
            raise UnsupportedPattern(f"{char!r} at {at}: no groups or alternation (write one pattern each)")
        if char == "$" and at == len(regex) - 1:
            parts.append(_Part(at, "", "", ("$",)))
            at += 1
            continue
        if char in "*+?{":
            raise UnsupportedPattern(f"{char!r} at {at} repeats nothing")
        start = at
        atom, at = _atom(regex, at)
        pieces: list[str] = []
        quantified = _quantified(regex, at, atom, pieces)
        parts.append(_Part(start, regex[start:at], atom, tuple(pieces)))
        at = quantified
    return parts


def lua_pattern(regex: str) -> str:
    """The Lua pattern that matches what `regex` matches, for the syntax redaction accepts (Redaction.patterns
    in api/api_tier.py documents it); UnsupportedPattern otherwise."""
    pieces = [piece for part in _parts(regex) for piece in part.pieces]
    if not pieces or pieces == ["^"]:
        raise UnsupportedPattern("the pattern matches nothing")
    pattern = "".join(pieces)
    unbounded = sum(piece.endswith(("*", "+")) for piece in pieces)
    if unbounded > 1:  # each one multiplies the positions a failing match tries by the text's length
        raise UnsupportedPattern("at most one of * + {n,} {n,m} per pattern (write one pattern each)")
    if sum(piece.endswith("?") for piece in pieces) > MOST_OPTIONAL:
        raise UnsupportedPattern(f"at most {MOST_OPTIONAL} ? per pattern")
    return pattern


def _atom(regex: str, at: int) -> tuple[str, int]:
    """The Lua form of the single character or class at `at`, and the position after it."""
    char = regex[at]
    if char == ".":
        return ".", at + 1
    if char == "[":
        return _bracket(regex, at)
    if char == "\\":
        if at + 1 >= len(regex):
            raise UnsupportedPattern("a trailing backslash")
        escaped = regex[at + 1]
        if escaped in ESCAPED_CLASSES:
            return ESCAPED_CLASSES[escaped], at + 2
        if escaped.isalnum():
            raise UnsupportedPattern(
                f"\\{escaped} at {at} is not supported (\\d \\w \\s and their negations are)"
            )
        return _literal(escaped), at + 2
    if char == "$":
        raise UnsupportedPattern(f"'$' at {at}: only at the end")
    return _literal(char), at + 1


def _literal(char: str) -> str:
    return "%" + char if char in LUA_MAGIC else char


def _bracket(regex: str, open_at: int) -> tuple[str, int]:
    at = open_at + 1
    pieces = ["["]
    if regex[at : at + 1] == "^":
        pieces.append("^")
        at += 1
    first = True
    while at < len(regex) and (regex[at] != "]" or first):
        char = regex[at]
        first = False
        if char == "\\" and at + 1 < len(regex):
            escaped = regex[at + 1]
            if escaped in IN_CLASS:
                pieces.append(IN_CLASS[escaped])
            elif escaped.isalnum():
                raise UnsupportedPattern(f"\\{escaped} inside brackets at {at} is not supported")
            else:
                pieces.append("%" + escaped)
            at += 2
            continue
        if char == "[":
            raise UnsupportedPattern(f"'[' inside brackets at {at}: escape it")
        # a range (a-z) passes as it is; Lua's magic characters are escaped
        pieces.append("%" + char if char in "%]^" or (char == "-" and _edge_dash(regex, at)) else char)
        at += 1
    if at >= len(regex):
        raise UnsupportedPattern(f"the bracket at {open_at} never closes")
    pieces.append("]")
    return "".join(pieces), at + 1


def _edge_dash(regex: str, at: int) -> bool:
    """A dash that is a character of the class, not a range: first or last inside the brackets."""
    return regex[at - 1] in "[^" or regex[at + 1] == "]"


def _quantified(regex: str, at: int, atom: str, pieces: list[str]) -> int:
    """Append `atom` with the quantifier at `at` (if any) to `pieces`; the position after both."""
    quantifier = regex[at : at + 1]
    if quantifier in ("*", "+", "?"):
        pieces.append(atom + quantifier)
        return at + 1
    if quantifier != "{":
        pieces.append(atom)
        return at
    close = regex.find("}", at)
    bounds = regex[at + 1 : close].split(",") if close != -1 else []
    if (
        not bounds
        or len(bounds) > 2
        or not bounds[0].isdigit()
        or not all(b.isdigit() for b in bounds[1:] if b)
    ):
        raise UnsupportedPattern(f"the repetition at {at} must be {{n}}, {{n,}} or {{n,m}}")
    least = int(bounds[0])
    if least > MOST_REPEATS or (len(bounds) == 2 and bounds[1] and int(bounds[1]) < max(least, 1)):
        raise UnsupportedPattern(f"the repetition at {at} must have n ≤ m, m ≥ 1, n ≤ {MOST_REPEATS}")
    # {n,m} masks runs of n or more, m or not: a Lua pattern has no bounded repetition, and masking more of
    # a run is the safe side
    tail = "" if len(bounds) == 1 else atom + "*"
    pieces.extend([atom] * least + ([tail] if tail else []))
    return close + 1


def prompt_pattern(regex: str) -> str:
    """The Lua pattern of a prompt check (PromptCheck.pattern in api/api_tier.py): `regex` in the syntax
    lua_pattern takes, lower-cased (the gateway lower-cases the prompt's ASCII letters too), and bound so
    that a failing search stays linear in the prompt's length whatever the prompt holds: it starts with a
    plain character, and a class it repeats without bound cannot match that character, so the runs scanned
    from one start never overlap those scanned from another. UnsupportedPattern otherwise."""
    lowered = _lowered(regex)
    if lowered.startswith("^") or lowered.endswith("$"):
        raise UnsupportedPattern("no anchors: a prompt is many strings, checked together")
    pattern = lua_pattern(lowered)
    parts = _parts(lowered)
    first = parts[0]
    if first.written[0] in ".[\\" or first.pieces != (first.atom,):
        raise UnsupportedPattern("it must start with a plain character, neither repeated nor optional")
    repeated = [part for part in parts if part.unbounded]
    for part in repeated:
        if re.fullmatch(part.written, first.written):
            raise UnsupportedPattern(
                f"the repetition at {part.at} can match {first.written!r}, the first character: a prompt "
                "could make the check slow"
            )
    # each ? doubles the ways a start is tried (and with a repetition, the runs scanned from it)
    if sum(part.optional for part in parts) > (0 if repeated else PROMPT_OPTIONAL):
        raise UnsupportedPattern(
            f"at most {PROMPT_OPTIONAL} ? in a prompt check, and none beside a repetition "
            "(write one check each)"
        )
    return pattern


def _lowered(regex: str) -> str:
    """`regex` with its letters lower-cased, but for those of escapes (\\D, \\W and \\S are classes)."""
    pieces, at = [], 0
    while at < len(regex):
        if regex[at] == "\\":
            pieces.append(regex[at : at + 2])
            at += 2
            continue
        pieces.append(regex[at].lower())
        at += 1
    return "".join(pieces)
