"""The CRDs are generated from the models, and crds/ holds exactly what the models generate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import pytest
import yaml
from pydantic import BaseModel, Field

from tollway.api import RESOURCES
from tollway.api.crd import SchemaError, custom_resource_definition, model_schema
from tollway.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_crds_folder_matches_the_models(tmp_path: Path) -> None:
    assert main(["crds", "--out", str(tmp_path)]) == 0
    generated = {path.name: path.read_text() for path in tmp_path.iterdir()}
    committed = {path.name: path.read_text() for path in (ROOT / "crds").iterdir()}
    assert generated == committed, "crds/ is stale: run `tollway crds --out crds`"


def walk(schema: dict[str, Any]) -> list[dict[str, Any]]:
    nodes = [schema]
    for child in schema.get("properties", {}).values():
        nodes += walk(child)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            nodes += walk(schema[key])
    return nodes


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda resource: resource.kind_name)
def test_schema_is_structural(resource: Any) -> None:
    root = custom_resource_definition(resource)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for node in walk(root):
        assert "$ref" not in node and "title" not in node
        assert "anyOf" not in node or node.get("x-kubernetes-int-or-string")
        assert node.get("type") in {"object", "array", "string", "integer", "number", "boolean", None}
        assert "default" not in node or None not in (
            node["default"].values() if isinstance(node["default"], dict) else []
        )


def test_crd_names_kinds_columns_and_subresource() -> None:
    crd = custom_resource_definition(RESOURCES[0])
    version = crd["spec"]["versions"][0]
    assert crd["spec"]["names"]["shortNames"] == ["md"]
    assert crd["spec"]["names"]["categories"] == ["tollway"]
    assert version["subresources"] == {"status": {}}
    assert [column["name"] for column in version["additionalPrinterColumns"]] == [
        "Ready",
        "Replicas",
        "P99",
        "Queue",
        "Cost/h",
        "Age",
    ]
    tier = custom_resource_definition(RESOURCES[1])["spec"]["versions"][0]
    assert [column["name"] for column in tier["additionalPrinterColumns"]] == [
        "RPM",
        "TPM",
        "Concurrency",
        "Consumers",
        "SLA",
        "Ready",
        "Age",
    ]


def test_defaults_reach_the_schema() -> None:
    spec = yaml.safe_load(yaml.safe_dump(custom_resource_definition(RESOURCES[0])))["spec"]["versions"][0]
    properties = spec["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert properties["autoscaling"]["default"]["scaleDown"] == {"stabilizationSeconds": 0}
    assert properties["triton"]["properties"]["gpus"]["default"] == 1


def test_a_schema_without_structural_form_is_refused() -> None:
    class Ambiguous(BaseModel):
        value: int | str | None = None

    with pytest.raises(SchemaError, match="union"):
        model_schema(Ambiguous)

    class Exclusive(BaseModel):
        value: Annotated[int, Field(gt=0)]

    with pytest.raises(SchemaError, match="exclusiveMinimum"):
        model_schema(Exclusive)
