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


class _Dumper(yaml.SafeDumper):
    """YAML for people: multi-line strings (config.pbtxt, scripts) as literal blocks, keys in their order,
    and no anchors (a value used twice is written twice)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _string)


def dump(document: Any) -> str:
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=110)
