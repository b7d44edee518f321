"""The only modules that talk to Prometheus (prometheus-api-client) and to Triton (its HTTP API)."""
