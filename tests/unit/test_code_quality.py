"""ruff, mypy (strict) and the import-linter layer contracts, run as tests so that CI holds the line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CHECKS = {
    "ruff-check": [str(BIN / "ruff"), "check", "operator", "tests", "hack"],
    "ruff-format": [str(BIN / "ruff"), "format", "--check", "operator", "tests", "hack"],
    "mypy": [str(BIN / "mypy")],
    "import-linter": [str(BIN / "lint-imports")],
}


@pytest.mark.parametrize("check", CHECKS, ids=list(CHECKS))
def test_code_is_clean(check: str) -> None:
    done = subprocess.run(CHECKS[check], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
