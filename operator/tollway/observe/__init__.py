"""The only modules that talk to Prometheus (prometheus-api-client) and Triton (tritonclient)."""
