"""Golden files: tests/golden/<case>/in.yaml → out/<Kind>-<name>.yaml, the whole translation of each resource.

`pytest --update-golden` rewrites the out/ folders; a reviewer reads the diff.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from tollway import documents
from tollway.cli import KINDS
from tollway.translate import translate

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
CASES = sorted(path.parent for path in GOLDEN.glob("*/in.yaml"))
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def rendered(case: Path) -> dict[str, str]:
    files = {}
    for document in documents.load([case / "in.yaml"]):
        result = translate(KINDS[document["kind"]], document, NOW)
        output = {
            "problems": list(result.problems),
            "status": result.status,
            "manifests": list(result.manifests),
        }
        name = f"{document['kind']}-{document['metadata']['name']}.yaml"
        files[name] = yaml.safe_dump(output, sort_keys=False, allow_unicode=True, width=110)
    return files


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
