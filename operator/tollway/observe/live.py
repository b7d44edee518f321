"""Triton and Prometheus as a reconcile sees them (`tollway.reconcile.Telemetry`)."""

from __future__ import annotations

from tollway.observe import alertmanager, prometheus, serving


class LiveTelemetry:
    model_state = staticmethod(serving.model_state)
    queue_depth = staticmethod(serving.queue_depth)
    model_metrics = staticmethod(prometheus.model_metrics)
    tier_usage = staticmethod(prometheus.tier_usage)
    tier_sla = staticmethod(prometheus.tier_sla)
    key_alerts = staticmethod(prometheus.key_alerts)
    post_alerts = staticmethod(alertmanager.post_alerts)
