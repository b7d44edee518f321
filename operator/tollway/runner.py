"""Starting kopf with Tollway's handlers and settings."""

from __future__ import annotations

import asyncio

import kopf

from tollway.handlers import registry
from tollway.settings import Settings


def run_operator(settings: Settings, *, verbose: bool = False) -> None:
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.JSON, log_prefix=False)
    asyncio.run(
        kopf.operator(
            registry=registry(settings),
            clusterwide=not settings.namespaces,
            namespaces=list(settings.namespaces),
            standalone=settings.peering is None,
            peering_name=settings.peering or "",
            liveness_endpoint=settings.liveness_endpoint,
        )
    )
