"""The operator process's own settings."""

from __future__ import annotations

from tollway.runner import limit_malloc_arenas


def test_glibc_takes_the_cap_on_malloc_arenas() -> None:
    # CI and the operator's image (python:3.11-slim) both run on glibc.
    assert limit_malloc_arenas(2) is True
