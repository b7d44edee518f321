"""Tollway: AI models on Triton as production APIs on Kubernetes, behind an Envoy gateway."""

__version__ = "0.1.0"
