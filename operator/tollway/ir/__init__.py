"""Plain data that says what the cluster must look like, between the typed API and the renderers.

Filled in as Tollway renders children (serving, gateway, scaling, monitoring); nothing here knows Kubernetes
or Envoy vocabulary's transport, only what must exist.
"""
