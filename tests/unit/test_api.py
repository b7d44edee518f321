"""The typed API: examples accepted, every rule's Python twin refusing what its CEL refuses, paths named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tollway import documents
from tollway.api import KINDS, ApiTier, ModelDeployment
from tollway.api.parse import InvalidResource, field_path, parse

from builders import api_tier, model_deployment

ROOT = Path(__file__).resolve().parents[2]
INVALID = sorted((ROOT / "tests" / "invalid").glob("*.yaml"))


def expectation(path: Path) -> tuple[str, str | None]:
    """The `# field:` and optional `# message:` header of a tests/invalid manifest."""
    header = dict(
        line[2:].split(": ", 1)
        for line in path.read_text().splitlines()
        if line.startswith("# ") and ": " in line
    )
    return header["field"], header.get("message")


def test_examples_are_valid() -> None:
    resources = [
        parse(KINDS[doc["kind"]], doc) for doc in documents.load([ROOT / "examples"]) if doc["kind"] in KINDS
    ]
    assert sorted(resource.metadata.name for resource in resources) == [
        "assistant",
        "chat",
        "embed",
        "enterprise",
        "free",
        "pro",
        "search",
    ]


def test_there_are_at_least_fifteen_invalid_manifests() -> None:
    assert len(INVALID) >= 15


@pytest.mark.parametrize("path", INVALID, ids=[path.stem for path in INVALID])
def test_invalid_manifest_is_refused_naming_its_field(path: Path) -> None:
    field, message = expectation(path)
    document = yaml.safe_load(path.read_text())
    with pytest.raises(InvalidResource) as refused:
        parse(KINDS[document["kind"]], document)
    problem = next((p for p in refused.value.problems if p.startswith(f"{field}: ")), None)
    assert problem is not None, refused.value.problems
    if message:
        assert message in problem


def test_model_name_defaults_to_metadata_name() -> None:
    assert parse(ModelDeployment, model_deployment("chat")).model_name == "chat"
    assert parse(ModelDeployment, model_deployment(**{"spec.model.name": "llama"})).model_name == "llama"


def test_defaults_match_the_documented_contract() -> None:
    spec = parse(ModelDeployment, model_deployment()).spec
    assert (spec.triton.gpus, spec.autoscaling.engine, spec.autoscaling.min_replicas) == (1, "hpa", 1)
    assert spec.autoscaling.scale_down.stabilization_seconds == 0  # README: "Why these defaults"
    assert spec.cache.enabled is False
    tier = parse(ApiTier, api_tier()).spec
    assert tier.limits.tokens_per_minute is None  # unset limit = unlimited
    assert tier.pricing.currency == "USD"


def test_keda_may_scale_to_zero() -> None:
    document = model_deployment(
        **{"spec.autoscaling": {"engine": "keda", "minReplicas": 0, "maxReplicas": 2}}
    )
    assert parse(ModelDeployment, document).spec.autoscaling.min_replicas == 0


@pytest.mark.parametrize("reference", ["chat", "chat:stable", "chat@3", "*", "text-embed.v2"])
def test_well_formed_model_references_are_accepted(reference: str) -> None:
    parse(ApiTier, api_tier(**{"spec.models": [reference]}))


@pytest.mark.parametrize("reference", ["chat:", "@3", "chat@0", "chat:Stable", "a b", "*:x"])
def test_malformed_model_references_are_refused(reference: str) -> None:
    with pytest.raises(InvalidResource, match=r"spec\.models: "):
        parse(ApiTier, api_tier(**{"spec.models": [reference]}))


def test_an_override_may_name_a_model_allowed_by_wildcard() -> None:
    document = api_tier(
        **{"spec.models": ["*"], "spec.overrides": [{"model": "embed", "tokensPerMinute": 5}]}
    )
    assert parse(ApiTier, document).spec.overrides[0].tokens_per_minute == 5


def test_status_is_never_a_reason_to_refuse_the_spec() -> None:
    document: dict[str, Any] = model_deployment()
    document["status"] = {"anything": ["tollway", "did", "not", "write"]}
    parse(ModelDeployment, document)


def test_field_path_formats_indexes_and_keys() -> None:
    assert (
        field_path(("spec", "versions", 1, "deprecation", "sunset")) == "spec.versions[1].deprecation.sunset"
    )
    assert field_path(()) == ""
