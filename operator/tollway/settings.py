"""How this operator process runs; read once by the CLI and handed down, never looked up by the core."""

from __future__ import annotations

from dataclasses import dataclass, field

from tollway.ir.network import NetworkPeers
from tollway.translate.gateway import GatewayOptions
from tollway.translate.serving import STORAGE_INITIALIZER, TOLLWAY_IMAGE


@dataclass(frozen=True)
class Settings:
    namespaces: tuple[str, ...] = ()
    """Namespaces to watch; empty watches all of them."""
    resync_seconds: float = 60.0
    """Every resource is reconciled at least this often, even when nothing in it changed."""
    liveness_endpoint: str | None = "http://0.0.0.0:8080/healthz"
    peering: str | None = None
    """Name of a kopf peering object, for several operator replicas; None runs standalone."""
    peering_priority: int = 0
    """This replica's kopf priority (the highest live one serves); set by the runner when peering."""
    triton_address: str = "{service}.{namespace}.svc:8000"
    """Where the operator reaches a model's Triton HTTP port; {service} and {namespace} are filled in."""
    triton_metrics_url: str | None = "http://{pod_ip}:8002/metrics"
    """Where the operator reads one Triton pod's queue (the burst floor, `translate.floor`); {pod_ip}, {pod}
    and {namespace} are filled in. None: no burst floor, the HPA alone scales."""
    storage_initializer_image: str = STORAGE_INITIALIZER
    """Image of the init container that downloads s3://, gs:// and as:// model directories."""
    tollway_image: str = TOLLWAY_IMAGE
    """Tollway's own image: runs `tollway openai-server` beside a language model's Triton."""
    prometheus_url: str | None = None
    """Prometheus to read live figures from (status.metrics) and for KEDA's triggers; None reads none
    (KEDA then queries prometheus-operator's usual in-cluster Service)."""
    alertmanager_url: str | None = None
    """Alertmanager to tell of suspended keys (TollwayKeySuspended, routed to their consumers' webhooks);
    None tells none."""
    gateway: GatewayOptions = field(default_factory=GatewayOptions)
    """How each namespace's gateway runs: Envoy replicas, Redis address, images, TLS for mTLS tiers."""
    network: NetworkPeers = field(default_factory=NetworkPeers)
    """The operator's and Prometheus's pods, which the NetworkPolicies admit to Triton and the ratelimit
    service."""
