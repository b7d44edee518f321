"""Triton's config.pbtxt (protobuf text format, so jinja2: it is neither YAML nor JSON)."""

from __future__ import annotations

import hashlib

from jinja2 import Environment, PackageLoader, StrictUndefined

from tollway.ir.serving import ModelConfig

_templates = Environment(
    loader=PackageLoader("tollway.render", "templates"),
    undefined=StrictUndefined,
    keep_trailing_newline=True,
    autoescape=False,  # protobuf text, not HTML; every value comes from validated, typed fields
)


def config_pbtxt(model: ModelConfig) -> str:
    return _templates.get_template("config.pbtxt.j2").render(model=model)


def checksum(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
