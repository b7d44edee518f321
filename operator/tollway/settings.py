"""How this operator process runs; read once by the CLI and handed down, never looked up by the core."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    namespaces: tuple[str, ...] = ()
    """Namespaces to watch; empty watches all of them."""
    resync_seconds: float = 60.0
    """Every resource is reconciled at least this often, even when nothing in it changed."""
    liveness_endpoint: str | None = "http://0.0.0.0:8080/healthz"
    peering: str | None = None
    """Name of a kopf peering object, for several operator replicas; None runs standalone."""
