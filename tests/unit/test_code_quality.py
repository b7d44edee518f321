"""ruff, mypy (strict), the import-linter layer contracts, and luacheck and StyLua over the gateway's Lua,
run as tests so that CI holds the line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LUA = sorted(
    str(path.relative_to(ROOT)) for path in (ROOT / "operator/tollway/render/templates").glob("*.lua")
)
CHECKS = {
    "ruff-check": [str(BIN / "ruff"), "check", "operator", "tests", "hack", "bench"],
    "ruff-format": [str(BIN / "ruff"), "format", "--check", "operator", "tests", "hack", "bench"],
    "mypy": [str(BIN / "mypy")],
    "import-linter": [str(BIN / "lint-imports")],
    # luacheck exits 1 on warnings too; StyLua comes from npm (hack/stylua.mjs installs it on first use).
    "luacheck": ["luacheck", "--no-color", "--formatter=plain", *LUA],
    "stylua": ["node", "hack/stylua.mjs", "--check", *LUA],
}


@pytest.mark.parametrize("check", CHECKS, ids=list(CHECKS))
def test_code_is_clean(check: str) -> None:
    done = subprocess.run(CHECKS[check], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_test_modules_have_names_of_their_own() -> None:
    """pytest imports each test file by its basename (tests/ has no packages): two alike and one is not
    collected at all when the whole suite runs."""
    names = [path.name for path in (ROOT / "tests").rglob("test_*.py")]
    assert sorted(name for name in set(names) if names.count(name) > 1) == []
