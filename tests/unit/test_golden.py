"""Golden files: tests/golden/<case>/in.yaml (or the folder `in`) → out/, the whole translation of the case,
IR and output both (as Envoy Gateway golden-tests both stages).

Per resource, `<kind>-<name>.yaml` (problems, status, children to prune, manifests) and, for a valid
ModelDeployment, `<kind>-<name>.ir.yaml`. Per namespace with an ApiTier, a folder `gateway-<namespace>/`:

- ir.yaml: the gateway IR;
- manifests.yaml: the children (and those to prune), each config file in them replaced by `<in FILE>`;
- bootstrap.yaml, listeners.yaml, clusters.yaml, ratelimit.yaml: those files, as the children carry them,
  except that listeners show each Lua program as a line with the sha256 of its code;
- lua-data.json: the data table that the request program is rendered with, one value a line.

So a one-field change to a tier is a few lines of diff. `pytest --update-golden` (`make golden`) rewrites the
out/ folders; a reviewer reads the diff.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import shutil
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tollway import documents
from tollway.ir.gateway import Gateway
from tollway.render.envoy import BODY_FILTER, LUA_FILTER, TOKEN_HEADERS_FILTER, body_data, lua_data
from tollway.render.lua import body_program, gateway_program, token_headers_program
from tollway.translate import GatewayResult, translate_all

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
#: A case's input is in.yaml, or a folder `in` (tests/golden/examples/in is a link to examples/).
CASES = sorted(path.parent for path in [*GOLDEN.glob("*/in.yaml"), *GOLDEN.glob("*/in")])
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)

CONFIG_FILES = {
    ("Secret", "envoy.yaml"): "bootstrap.yaml",
    ("Secret", "lds.yaml"): "listeners.yaml",
    ("Secret", "cds.yaml"): "clusters.yaml",
    ("ConfigMap", "tollway.yaml"): "ratelimit.yaml",
}
"""(kind, key) of a config file in the gateway's children → the golden file that holds it."""
LUA_DATA = "lua-data.json"

Manifest = dict[str, Any]


def rendered(case: Path) -> dict[str, str]:
    """The case's golden files, by their path under out/."""
    source = case / "in.yaml" if (case / "in.yaml").exists() else case / "in"
    translation = translate_all(documents.load([source]), NOW, fresh="golden")
    files = {}
    for document, result in translation.resources:
        stem = f"{document['kind'].lower()}-{document['metadata']['name']}"
        output = {
            "problems": list(result.problems),
            "status": result.status,
            "prune": [f"{api_version} {kind}" for api_version, kind in result.stale_kinds],
            "manifests": list(result.manifests),
        }
        files[f"{stem}.yaml"] = documents.dump(output)
        if result.ir is not None:
            files[f"{stem}.ir.yaml"] = documents.dump(plain(result.ir))
    for namespace, gateway in translation.gateways.items():
        files |= {f"gateway-{namespace}/{name}": text for name, text in gateway_files(gateway).items()}
    return files


def plain(value: Any) -> Any:
    """IR as YAML-ready data: dataclasses as mappings in field order, tuples as lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: plain(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    return value


def gateway_files(gateway: GatewayResult) -> dict[str, str]:
    """A namespace's gateway as golden files: IR, manifests, their config files, the Lua program's data."""
    files: dict[str, str] = {}
    manifests = []
    for manifest in gateway.manifests:
        with_pointers, config = config_apart(manifest)
        manifests.append(with_pointers)
        files |= config
    files["manifests.yaml"] = documents.dump(
        {"prune": [f"{kind}/{name}" for _, kind, name in gateway.stale], "manifests": manifests}
    )
    ir = gateway.plan.gateway
    if ir is not None:
        files["ir.yaml"] = documents.dump(plain(ir))
        files[LUA_DATA] = json.dumps(lua_data(ir), indent=2, sort_keys=True) + "\n"
    if "listeners.yaml" in files:
        assert ir is not None
        listeners = without_programs(yaml.safe_load(files["listeners.yaml"]), lua_programs(ir))
        files["listeners.yaml"] = documents.dump(listeners)
    return dict(sorted(files.items()))


def config_apart(manifest: Manifest) -> tuple[Manifest, dict[str, str]]:
    """The manifest with each config file replaced by `<in FILE>` (a Secret's data decoded, as stringData),
    and those files by golden file name."""
    kind = manifest["kind"]
    if kind == "Secret":
        data = {key: base64.b64decode(value).decode() for key, value in manifest["data"].items()}
        field = "stringData"
    elif kind == "ConfigMap":
        data, field = manifest["data"], "data"
    else:
        return manifest, {}
    files = {CONFIG_FILES[kind, key]: text for key, text in data.items() if (kind, key) in CONFIG_FILES}
    pointed = {
        key: f"<in {CONFIG_FILES[kind, key]}>" if (kind, key) in CONFIG_FILES else text
        for key, text in data.items()
    }
    rest = {key: value for key, value in manifest.items() if key != "data"}
    return {**rest, field: pointed}, files


def lua_programs(gateway: Gateway) -> dict[str, tuple[str, str]]:
    """Lua filter name → (the program it must run, the line that stands for it in the golden file).

    The gateway and body programs are their data table (in lua-data.json; the body program's is its tiers
    and models) and code; the line's hash pins the code, as the program rendered with an empty table
    (wherever that table sits in it)."""
    token_headers = token_headers_program()
    data = lua_data(gateway)
    return {
        LUA_FILTER: (
            gateway_program(data),
            f"<gateway program, sha256 {digest(gateway_program({}))}…; data in {LUA_DATA}>",
        ),
        BODY_FILTER: (
            body_program(body_data(data)),
            f"<body program, sha256 {digest(body_program({}))}…; data: tiers and models of {LUA_DATA}>",
        ),
        TOKEN_HEADERS_FILTER: (token_headers, f"<token_headers program, sha256 {digest(token_headers)}…>"),
    }


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def without_programs(node: Any, programs: Mapping[str, tuple[str, str]]) -> Any:
    """`node` with each Lua filter's program replaced by its line; a filter that runs anything else fails
    the test (its golden file could not say what it runs)."""
    if isinstance(node, list):
        return [without_programs(item, programs) for item in node]
    if not isinstance(node, dict):
        return node
    name = node.get("name")
    if isinstance(name, str) and name in programs:
        program, line = programs[name]
        replaced = substituted(node, program, line)
        assert replaced != node, f"the {name} filter runs another program than the golden test renders"
        return replaced
    return {key: without_programs(value, programs) for key, value in node.items()}


def substituted(node: Any, old: str, new: str) -> Any:
    if isinstance(node, list):
        return [substituted(item, old, new) for item in node]
    if isinstance(node, dict):
        return {key: substituted(value, old, new) for key, value in node.items()}
    return new if node == old else node


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_golden(case: Path, update_golden: bool) -> None:
    files = rendered(case)
    out = case / "out"
    if update_golden:
        shutil.rmtree(out, ignore_errors=True)  # stale files and folders go with it
        for name, text in files.items():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_text(text)
    stored = {path.relative_to(out).as_posix(): path.read_text() for path in out.rglob("*") if path.is_file()}
    assert sorted(stored) == sorted(files), "out/ differs from the translation: `make golden`, read the diff"
    for name, text in files.items():
        assert stored[name] == text, f"{case.name}/out/{name}"


def test_there_are_golden_cases() -> None:
    assert len(CASES) >= 4
