"""The pure core: custom resources in, what the cluster must hold out (manifests and status).

No clock (the caller passes `now`), no I/O, no logging, no settings lookups.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

from tollway.api import Resource
from tollway.api.parse import InvalidResource, parse
from tollway.translate.conditions import condition

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Result:
    """What one resource becomes."""

    status: dict[str, Any]
    """The status fields Tollway owns, in wire form (camelCase), conditions included."""
    manifests: tuple[Manifest, ...] = ()
    """Children to apply; empty when the resource is invalid, so nothing is ever half-applied."""
    problems: tuple[str, ...] = field(default=())
    """Why the resource is invalid, each naming its field; empty when it is valid."""


def translate(kind: type[Resource], document: Mapping[str, Any], now: datetime) -> Result:
    generation = int((document.get("metadata") or {}).get("generation") or 0)
    make = partial(condition, generation=generation, now=now)
    try:
        parse(kind, document)
    except InvalidResource as invalid:
        message = "; ".join(invalid.problems)
        conditions = [
            make("Ready", "False", "InvalidSpec", message),
            make("Progressing", "False", "InvalidSpec", "nothing is applied until the spec is fixed"),
            make("Degraded", "True", "InvalidSpec", message),
        ]
        return Result(status=_status(kind, generation, conditions), problems=invalid.problems)
    not_yet = f"the spec is valid; Tollway does not create {kind.kind_name} children yet"
    conditions = [
        make("Ready", "False", "NotImplemented", not_yet),
        make("Progressing", "False", "NotImplemented", "nothing to roll out"),
        make("Degraded", "False", "AsExpected"),
    ]
    return Result(status=_status(kind, generation, conditions))


def _status(kind: type[Resource], generation: int, conditions: list[Any]) -> dict[str, Any]:
    status = kind.status_model.model_validate({"observed_generation": generation, "conditions": conditions})
    return status.model_dump(by_alias=True, exclude_unset=True, mode="json")
