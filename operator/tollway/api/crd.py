"""CustomResourceDefinitions generated from the pydantic models, the single source of the schema.

Pydantic writes JSON Schema; a CRD wants a *structural* OpenAPI v3 schema: no `$ref`, no `anyOf` except for
int-or-string, no `null` types, no `additionalProperties: false` beside `properties`. `structural()` does that
translation and refuses any keyword it does not know how to carry over, so a new field type cannot slip
into the CRD half-translated.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from tollway.api.base import GROUP, NAME_RULE, VERSION, Resource

KEPT = {
    "type",
    "description",
    "default",
    "enum",
    "format",
    "pattern",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "maxProperties",
    "required",
    "properties",
    "items",
    "additionalProperties",
    "anyOf",
}
DROPPED = {"title"}


class SchemaError(ValueError):
    """The pydantic schema uses something a structural CRD schema cannot express."""


def structural(schema: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    """The structural OpenAPI schema for one pydantic JSON Schema node."""
    node = _resolve(schema, definitions)
    out: dict[str, Any] = {}
    for key, value in node.items():
        converted = _keyword(key, value, definitions)
        if converted is not None:
            out[key] = converted
    return out


def _resolve(schema: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    """Inline `$ref`s, and turn `Optional[X]` (anyOf X, null) into X: an absent field is the CRD's None."""
    node = dict(schema)
    while "$ref" in node or ("anyOf" in node and not node.get("x-kubernetes-int-or-string")):
        if "$ref" in node:
            node = {**definitions[node.pop("$ref").rsplit("/", 1)[-1]], **node}
            continue
        options = [option for option in node.pop("anyOf") if option.get("type") != "null"]
        if len(options) != 1:
            raise SchemaError(f"a union of {len(options)} types has no structural form: {options}")
        node = {**options[0], **node}
    return node


def _keyword(key: str, value: Any, definitions: dict[str, Any]) -> Any:
    """One keyword carried over to the structural schema; None drops it."""
    if key in DROPPED:
        return None
    if key.startswith("x-kubernetes-"):
        return value
    if key not in KEPT:
        raise SchemaError(f"JSON Schema keyword {key!r} has no structural CRD form")
    if key == "properties":
        return {name: structural(child, definitions) for name, child in value.items()}
    if key == "items":
        return structural(value, definitions)
    if key == "additionalProperties":
        # `false` (unknown fields refused) is what the API server does for a structural schema anyway.
        return structural(value, definitions) if isinstance(value, dict) else None
    if key == "default":
        return _without_nulls(value)
    return value


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_nulls(item) for item in value]
    return value


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    definitions = raw.pop("$defs", {})
    return structural(raw, definitions)


def custom_resource_definition(resource: type[Resource]) -> dict[str, Any]:
    """The CRD of one Tollway resource kind."""
    spec_model: type[BaseModel] = resource.model_fields["spec"].annotation  # type: ignore[assignment]
    status_model: type[BaseModel] = resource.status_model
    root: dict[str, Any] = {
        "type": "object",
        "description": resource.__doc__ or "",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "x-kubernetes-validations": [NAME_RULE.crd_validation()]}
                },
            },
            "spec": model_schema(spec_model),
            "status": model_schema(status_model),
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{resource.plural}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "tollway", "app.kubernetes.io/part-of": "tollway"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": resource.kind_name,
                "listKind": f"{resource.kind_name}List",
                "plural": resource.plural,
                "singular": resource.kind_name.lower(),
                "shortNames": list(resource.short_names),
                "categories": ["tollway"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        column.model_dump(by_alias=True, exclude_defaults=True)
                        | {"type": column.type, "jsonPath": column.json_path}
                        for column in resource.printer_columns
                    ],
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }
