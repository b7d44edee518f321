"""The container image definition installs this project and runs its declared entry point; the API reference
in docs/ is the one the models generate."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

from tollway.api import RESOURCES
from tollway.api.reference import reference

ROOT = Path(__file__).resolve().parents[2]


def test_the_dockerfile_installs_this_package_and_runs_its_entry_point() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    scripts = project["scripts"]
    assert scripts == {"tollway": "tollway.cli:main"}
    instructions = [
        line.split(None, 1) for line in dockerfile.splitlines() if line and not line.startswith("#")
    ]
    commands = {keyword: rest for keyword, rest in instructions}
    assert "pip install --no-cache-dir ." in commands["RUN"]  # this project, from the copied sources
    assert "COPY" in commands and any(
        rest.startswith("operator/") for keyword, rest in instructions if keyword == "COPY"
    )
    assert json.loads(commands["ENTRYPOINT"]) == ["tollway"]
    assert json.loads(commands["CMD"]) == ["run"]
    assert re.fullmatch(r"\d+:\d+", commands["USER"])  # not root
    python = project["requires-python"].lstrip(">=~")
    assert commands["FROM"].startswith(f"python:{python}")


def test_the_api_reference_is_current() -> None:
    assert (ROOT / "docs" / "api-reference.md").read_text() == reference(RESOURCES), "run `make docs`"
