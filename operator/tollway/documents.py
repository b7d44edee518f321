"""Reading manifests from files and folders, for the commands that work without a cluster."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml


def load(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Every YAML document in the given files, and in the *.yaml/*.yml files of the given folders."""
    documents: list[dict[str, Any]] = []
    for path in map(Path, paths):
        files = sorted([*path.glob("*.yaml"), *path.glob("*.yml")]) if path.is_dir() else [path]
        for file in files:
            with file.open() as stream:
                documents += [document for document in yaml.safe_load_all(stream) if document]
    return documents
