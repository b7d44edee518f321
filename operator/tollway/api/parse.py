"""From a custom resource as the API server holds it (a dict) to a validated, typed model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from pydantic import ValidationError

from tollway.api.base import Resource

R = TypeVar("R", bound=Resource)


class InvalidResource(ValueError):
    """A resource that breaks a rule; each message names the field at fault."""

    def __init__(self, kind: str, name: str, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__(f"{kind} {name!r} is invalid: " + "; ".join(self.problems))


def field_path(location: Sequence[int | str]) -> str:
    """('spec', 'versions', 1, 'version') → 'spec.versions[1].version'."""
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def describe(error: Mapping[str, Any]) -> str:
    location = [*error["loc"]]
    field = (error.get("ctx") or {}).get("field")
    if field:
        location += field.split(".")
    path = field_path(location)
    return f"{path}: {error['msg']}" if path else str(error["msg"])


def parse(kind: type[R], document: Mapping[str, Any]) -> R:
    """The typed resource; `InvalidResource` listing every problem when the document breaks a rule.

    Status is left out: it is Tollway's own output, and never a reason to refuse the spec.
    """
    metadata = document.get("metadata") or {}
    try:
        # Strict, as the API server is: "7" is no integer and "true" no boolean (the CRD refuses both).
        body = {key: value for key, value in document.items() if key != "status"}
        return kind.model_validate(body, strict=True)
    except ValidationError as error:
        problems = [describe(problem) for problem in error.errors(include_url=False)]
        raise InvalidResource(kind.kind_name, str(metadata.get("name", "")), problems) from None
