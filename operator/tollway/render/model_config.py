"""Triton's config.pbtxt (protobuf text format, so jinja2: it is neither YAML nor JSON), and its merge with
the config.pbtxt the model's repository holds."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from types import ModuleType

from google.protobuf import text_format
from jinja2 import Environment, PackageLoader, StrictUndefined

from tollway.ir.serving import ModelConfig


def _model_config_messages() -> ModuleType:
    """tritonclient's generated messages of config.pbtxt (tritonclient/grpc/model_config_pb2.py), loaded by
    themselves: imported through their package they would run tritonclient.grpc's __init__, which loads gRPC
    and numpy, about 10 MiB of the operator's memory for nothing it uses (README: Benchmarks). The module
    needs protobuf only."""
    found = importlib.util.find_spec("tritonclient")
    if found is None or not found.submodule_search_locations:
        raise ImportError("tritonclient is not installed")
    path = Path(next(iter(found.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("tollway.render.triton_model_config_pb2", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


model_config_pb2 = _model_config_messages()

_templates = Environment(
    loader=PackageLoader("tollway.render", "templates"),
    undefined=StrictUndefined,
    keep_trailing_newline=True,
    autoescape=False,  # protobuf text, not HTML; every value comes from validated, typed fields
)


def config_pbtxt(model: ModelConfig) -> str:
    return _templates.get_template("config.pbtxt.j2").render(model=model)


OWNED_FIELDS = (
    "name",
    "platform",
    "backend",
    "max_batch_size",
    "version_policy",
    "instance_group",
    "dynamic_batching",
    "sequence_batching",
    "ensemble_scheduling",
    "response_cache",
)
"""The fields of a model's config.pbtxt that Tollway owns: the rendered config's replace the repository's
(`platform` goes: the spec's `backend` names what runs the model; the scheduler is Tollway's dynamic
batcher, with its priority levels and queue policy)."""
OWNED_WHEN_RENDERED = ("model_transaction_policy", "optimization")
"""Owned only when the rendered config sets them (a streaming model's decoupled policy, the spec's
TensorRT precision); otherwise the repository's stand."""


def merge_config(repository: str, rendered: str) -> str:
    """The config Triton runs with: the repository's config.pbtxt (its inputs, outputs, backend parameters and
    everything else Tollway does not own) with the rendered config's fields in place of its own where
    Tollway owns them. ParseError (protobuf's) when either is not a model config."""
    merged = text_format.Parse(repository, model_config_pb2.ModelConfig())
    ours = text_format.Parse(rendered, model_config_pb2.ModelConfig())
    for name in OWNED_FIELDS:
        merged.ClearField(name)
    for name in OWNED_WHEN_RENDERED:
        if ours.HasField(name):
            merged.ClearField(name)
    merged.MergeFrom(ours)
    header = "# Merged by Tollway: the repository's config.pbtxt, the fields Tollway owns rendered.\n"
    return header + str(text_format.MessageToString(merged))


def checksum(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
