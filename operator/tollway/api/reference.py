"""The API reference (Markdown), generated from the CRDs that the pydantic models generate: one table per
kind, a row per field (dotted path, type, default, description), so the reference cannot drift from the
schema (a test compares docs/api-reference.md with this)."""

from __future__ import annotations

import json
from typing import Any

from tollway.api.base import Resource
from tollway.api.crd import custom_resource_definition


def _type(node: dict[str, Any]) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "int or string"
    kind = str(node.get("type", "object"))
    if kind == "array":
        return f"[]{_type(node.get('items', {}))}"
    if kind == "object" and "additionalProperties" in node:
        return f"map[string]{_type(node['additionalProperties'])}"
    if "enum" in node:
        return " | ".join(f"`{value}`" for value in node["enum"])
    return kind


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _rows(node: dict[str, Any], path: str, required: bool) -> list[str]:
    rows = []
    if path:
        shown = "default" in node and node.get("type") != "object"  # an object's defaults show on its fields
        default = f"`{json.dumps(node['default'])}`" if shown else ("required" if required else "")
        rows.append(
            f"| `{path}` | {_cell(_type(node))} | {_cell(default)} | {_cell(node.get('description', ''))} |"
        )
    children = node.get("properties") or (node.get("items") or {}).get("properties")
    if children:
        needed = set(node.get("required") or (node.get("items") or {}).get("required") or ())
        prefix = f"{path}[]." if node.get("type") == "array" else (f"{path}." if path else "")
        for name, child in children.items():
            rows += _rows(child, f"{prefix}{name}", name in needed)
    return rows


def reference(resources: tuple[type[Resource], ...]) -> str:
    parts = [
        "# API reference\n",
        "Generated from the pydantic models by `tollway api-reference` (`make docs`); a test keeps it "
        "current.\n",
    ]
    for resource in resources:
        definition = custom_resource_definition(resource)
        version = definition["spec"]["versions"][0]
        schema = version["schema"]["openAPIV3Schema"]["properties"]
        parts.append(f"## {resource.kind_name} ({definition['spec']['group']}/{version['name']})\n")
        parts.append(f"{_cell(resource.__doc__ or '')}\n")
        for section in ("spec", "status"):
            parts.append(f"### {section}\n")
            parts.append("| Field | Type | Default | Description |\n| --- | --- | --- | --- |")
            parts.append("\n".join(_rows(schema[section], "", False)) + "\n")
    return "\n".join(parts)
