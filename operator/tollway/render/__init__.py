"""Pure functions from the IR to manifests (dicts) and to config text (jinja2, for non-YAML formats only)."""
