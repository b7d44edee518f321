"""Golden files: tests/golden/<case>/in.yaml → out/<Kind>-<name>.yaml, the whole translation of each resource.

`pytest --update-golden` rewrites the out/ folders; a reviewer reads the diff.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tollway import documents
from tollway.translate import translate_all

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
#: A case's input is in.yaml, or a folder `in` (tests/golden/examples/in is a link to examples/).
CASES = sorted(path.parent for path in [*GOLDEN.glob("*/in.yaml"), *GOLDEN.glob("*/in")])
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def rendered(case: Path) -> dict[str, str]:
    files = {}
    source = case / "in.yaml" if (case / "in.yaml").exists() else case / "in"
    translation = translate_all(documents.load([source]), NOW)
    for document, result in translation.resources:
        output = {
            "problems": list(result.problems),
            "status": result.status,
            "prune": [f"{api_version} {kind}" for api_version, kind in result.stale_kinds],
            "manifests": list(result.manifests),
        }
        name = f"{document['kind']}-{document['metadata']['name']}.yaml"
        files[name] = documents.dump(output)
    for namespace, gateway in translation.gateways.items():
        output = {
            "prune": [f"{kind}/{name}" for _, kind, name in gateway.stale],
            "manifests": [readable(manifest) for manifest in gateway.manifests],
        }
        files[f"Gateway-{namespace}.yaml"] = documents.dump(output)
    return files


def readable(manifest: dict[str, Any]) -> dict[str, Any]:
    """A Secret with its data decoded (the golden file is for reading; the bytes are the same)."""
    if manifest["kind"] != "Secret":
        return manifest
    data = {name: base64.b64decode(value).decode() for name, value in manifest["data"].items()}
    return {**{key: value for key, value in manifest.items() if key != "data"}, "stringData": data}


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_golden(case: Path, update_golden: bool) -> None:
    files = rendered(case)
    out = case / "out"
    if update_golden:
        out.mkdir(exist_ok=True)
        for stale in out.glob("*.yaml"):
            stale.unlink()
        for name, text in files.items():
            (out / name).write_text(text)
    assert {path.name: path.read_text() for path in out.glob("*.yaml")} == files


def test_there_are_golden_cases() -> None:
    assert len(CASES) >= 4
