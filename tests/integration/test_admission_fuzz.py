"""Admission, fuzzed: hypothesis builds ModelDeployment and ApiTier specs from the CRDs' own schemas (valid by
the schema, so the CEL rules get exercised) and breaks some of them on purpose (a wrong type, a number out
of range, a bad enum value, a string off its pattern or too long, a list too long, a required field
missing, an unknown field); each goes to the real API server (a server-side dry run, unknown fields refused
as kubectl refuses them) and to the pydantic twin in operator/tollway/api/, and the two verdicts must agree.
A disagreement prints the document and both messages.

ADMISSION_FUZZ_EXAMPLES (default 60 per kind) sets the number of documents per kind, for a deeper run.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tollway.api import ApiTier, ModelDeployment, Resource
from tollway.api.parse import InvalidResource, parse

from testbed.kube import CRDS, Cluster

NAMESPACE = "admission-fuzz"
EXAMPLES = int(os.environ.get("ADMISSION_FUZZ_EXAMPLES", "60"))
Draw = Callable[[st.SearchStrategy[Any]], Any]
Schema = dict[str, Any]
EXAMPLES_DIR = CRDS.parent / "examples"
#: The valid specs the documents start from: the examples'.
BASES: dict[type[Resource], list[Any]] = {
    kind: [
        document["spec"]
        for path in sorted(EXAMPLES_DIR.glob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text())
        if document and document.get("kind") == kind.kind_name
    ]
    for kind in (ModelDeployment, ApiTier)
}


def spec_schema(kind: type[Resource]) -> Schema:
    crd = yaml.safe_load((CRDS / f"{kind.plural}.tollway.dev.yaml").read_text())
    return dict(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"])


#: Loaded once: the strategies are cached by schema node (`value`), so the nodes must live as long.
SCHEMAS: dict[type[Resource], Schema] = {kind: spec_schema(kind) for kind in (ModelDeployment, ApiTier)}


def _string(schema: Schema) -> st.SearchStrategy[str]:
    longest = int(schema.get("maxLength", 24))
    shortest = int(schema.get("minLength", 0))
    if "pattern" in schema:
        # The pattern's own language is RE2's; those in the CRDs read the same in Python's.
        matching = st.from_regex(re.compile(schema["pattern"]), fullmatch=True)
        return matching.filter(lambda text: shortest <= len(text) <= longest)
    alphabet = st.characters(codec="ascii", categories=["L", "N"])
    return st.text(alphabet, min_size=shortest, max_size=min(longest, 24))


_strategies: dict[int, st.SearchStrategy[Any]] = {}


def value(schema: Schema, depth: int = 0) -> st.SearchStrategy[Any]:
    """Values that the schema (not necessarily its CEL rules) admits; one strategy per schema node."""
    if id(schema) not in _strategies:
        _strategies[id(schema)] = _value(schema, depth)
    return _strategies[id(schema)]


def _value(schema: Schema, depth: int) -> st.SearchStrategy[Any]:
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if schema.get("x-kubernetes-int-or-string"):
        return st.one_of(st.integers(0, 64), st.sampled_from(["1", "500m", "8Gi", "2"]))
    kind = schema.get("type")
    if kind == "object":
        properties = schema.get("properties") or {}
        required = set(schema.get("required", ()))
        fixed = st.fixed_dictionaries(
            {name: value(child, depth + 1) for name, child in properties.items() if name in required},
            optional={
                name: value(child, depth + 1) for name, child in properties.items() if name not in required
            }
            if depth < 4
            else {},
        )
        extra = schema.get("additionalProperties")
        if not isinstance(extra, dict):
            return fixed
        keys = st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True)
        more = st.dictionaries(keys, value(extra, depth + 1), max_size=2)
        return st.builds(lambda known, added: {**added, **known}, fixed, more)
    if kind == "array":
        most = min(int(schema.get("maxItems", 3)), 3)
        return st.lists(value(schema["items"], depth + 1), min_size=schema.get("minItems", 0), max_size=most)
    if kind == "string":
        return _string(schema)
    if kind == "integer":
        low = int(schema.get("minimum", -5))
        return st.integers(low, int(schema.get("maximum", max(low, 0) + 20)))
    if kind == "number":
        return st.floats(schema.get("minimum", 0), schema.get("maximum", 100), allow_nan=False)
    if kind == "boolean":
        return st.booleans()
    return st.sampled_from(["x", 1])


@st.composite
def mixed(draw: Draw, base: Any, schema: Schema) -> Any:
    """`base` (a valid spec) with some of its values, at every level, drawn afresh from the schema, some
    optional ones left out and some added: valid documents are common, and every rule gets its chances."""
    if not (isinstance(base, dict) and schema.get("type") == "object" and "properties" in schema):
        return draw(st.one_of(st.just(base), value(schema))) if draw(st.integers(0, 3)) == 0 else base
    required = set(schema.get("required", ()))
    found: dict[str, Any] = {}
    for name, child in schema["properties"].items():
        choice = draw(st.integers(0, 5))
        if name in base and (choice > 0 or name in required):
            found[name] = draw(mixed(base[name], child))
        elif name not in base and choice == 0:
            found[name] = draw(value(child))
    return found


def places(
    document: Any, schema: Schema, path: tuple[Any, ...] = ()
) -> Iterator[tuple[tuple[Any, ...], Schema]]:
    """Every (path, schema) of the document's values, the document itself first."""
    yield path, schema
    if isinstance(document, dict):
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for name, child in document.items():
            sub = properties.get(name) or (extra if isinstance(extra, dict) else None)
            if sub is not None:
                yield from places(child, sub, (*path, name))
    elif isinstance(document, list) and "items" in schema:
        for index, child in enumerate(document):
            yield from places(child, schema["items"], (*path, index))


def breakages(schema: Schema) -> list[Callable[[Any], Any]]:
    """Ways to break a value of this schema: each returns the broken value (or REMOVE a required key)."""
    found: list[Callable[[Any], Any]] = []
    kind = schema.get("type")
    found.append(lambda _: {"not": "this"} if kind != "object" else "a string")  # a wrong type
    if kind in ("integer", "number"):
        found.append(lambda _: "7")  # a number written as a string
        if "minimum" in schema:
            found.append(lambda _: schema["minimum"] - 1)
        if "maximum" in schema:
            found.append(lambda _: schema["maximum"] + 1)
        if kind == "integer":
            found.append(lambda _: 2.5)
    if kind == "boolean":
        found.append(lambda _: "true")
    if "enum" in schema:
        found.append(lambda _: "Bogus")
    if kind == "string" and "pattern" in schema:
        found.append(lambda _: "Not Valid!")
    if kind == "string" and "maxLength" in schema:
        found.append(lambda _: "a" * (schema["maxLength"] + 1))
    if kind == "array" and "maxItems" in schema:
        found.append(lambda current: (current or ["x"]) * (schema["maxItems"] + 1))
    if kind == "object":
        found.append(lambda current: {**current, "bogusField": 1})  # an unknown field
        if schema.get("required"):
            found.append(lambda current: {k: v for k, v in current.items() if k != schema["required"][0]})
    return found


@st.composite
def document(draw: Draw, kind: type[Resource]) -> dict[str, Any]:
    """A document of `kind`: its spec drawn from the schema, then (half the time) one value broken."""
    schema = SCHEMAS[kind]
    spec = copy.deepcopy(draw(mixed(draw(st.sampled_from(BASES[kind])), schema)))  # broken below, in place
    if draw(st.booleans()):
        path, target = draw(st.sampled_from(list(places(spec, schema))))
        parent: Any = None
        current: Any = spec
        for part in path:
            parent, current = current, current[part]
        broken = draw(st.sampled_from(breakages(target)))(current)
        if parent is None:
            spec = broken
        else:
            parent[path[-1]] = broken
    name = draw(st.one_of(st.just("fuzzed"), st.from_regex(r"[a-z][a-z0-9-]{0,45}", fullmatch=True)))
    return {
        "apiVersion": "tollway.dev/v1alpha1",
        "kind": kind.kind_name,
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": spec,
    }


@pytest.fixture(scope="module")
def custom_objects(cluster: Cluster) -> client.CustomObjectsApi:
    cluster.namespace(NAMESPACE)
    api = config.new_client_from_config(str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
    return client.CustomObjectsApi(api)


def api_server_verdict(
    api: client.CustomObjectsApi, kind: type[Resource], body: dict[str, Any]
) -> str | None:
    """None when the API server would admit `body` (a dry run), else its message."""
    try:
        api.create_namespaced_custom_object(
            "tollway.dev", "v1alpha1", NAMESPACE, kind.plural, body, dry_run="All", field_validation="Strict"
        )
    except ApiException as refused:
        assert refused.status in (400, 422), refused  # refused for the document, not for anything else
        return str(json.loads(refused.body or "{}").get("message", refused.reason))
    return None


def twin_verdict(kind: type[Resource], body: dict[str, Any]) -> str | None:
    try:
        parse(kind, json.loads(json.dumps(body)))
    except InvalidResource as invalid:
        return "; ".join(invalid.problems)
    return None


@pytest.mark.parametrize("kind", [ModelDeployment, ApiTier], ids=lambda kind: kind.kind_name)
def test_the_api_server_and_the_pydantic_twin_agree(
    custom_objects: client.CustomObjectsApi, kind: type[Resource]
) -> None:
    verdicts: list[bool] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    )
    @given(document(kind))
    def agree(body: dict[str, Any]) -> None:
        server, twin = api_server_verdict(custom_objects, kind, body), twin_verdict(kind, body)
        verdicts.append(server is None)
        assert (server is None) == (twin is None), (
            f"the API server and the pydantic model disagree on\n{yaml.safe_dump(body)}\n"
            f"API server: {server or 'admitted'}\npydantic:   {twin or 'admitted'}"
        )

    agree()
    assert any(verdicts) and not all(verdicts)  # both verdicts were drawn
