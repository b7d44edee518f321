"""Run the real Triton Inference Server on this machine, on CPU, from the PyPI wheel nvidia-pytriton.

The wheel carries the `tritonserver` binary, its Python backend and one backend stub per Python version;
PyTriton itself assembles them at run time. This does the same for a plain `tritonserver` command line,
so tests, the demo and the benchmarks start Triton with exactly the arguments and model config Tollway
renders. The model it serves is the echo model (tests/models/echo): `infer_body`, `outputs` and `usage` are
what to send it and how to read its answer.

Pitfall: the stub links Debian's libpython3.11, so the venv must come from /usr/bin/python3 (hack/setup
does that); models then fail to load from other 3.11 builds.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tritonclient.http
from openai import Stream
from openai.types.chat import ChatCompletionChunk

from tollway import cli
from tollway.api import ModelDeployment
from tollway.api.parse import parse
from tollway.ir.serving import TritonServing
from tollway.render.model_config import config_pbtxt
from tollway.render.serving import KEY_VARIABLE, openai_server_args, triton_args
from tollway.translate.serving import plan_serving

from testbed.client import Reply
from testbed.processes import Process, answers_http, free_port, poll
from testbed.processes import start as start_process

ROOT = Path(__file__).resolve().parents[2]
#: A stand-in model for CPU-only machines: OUTPUT = INPUT x version, with token usage (see its docstring).
ECHO_MODEL = ROOT / "tests" / "models" / "echo" / "model.py"
#: The stand-in for a streaming LLM (a decoupled model): text in, text out a token at a time.
STREAMER_MODEL = ROOT / "tests" / "models" / "streamer" / "model.py"
#: The stand-in for an embedding model: texts in, a vector each out.
EMBEDDER_MODEL = ROOT / "tests" / "models" / "embedder" / "model.py"
GUARDRAIL_MODEL = ROOT / "tests" / "models" / "guardrail" / "model.py"
"""Judges prompts for a tier's guardrail check: TEXT in, FLAGGED out (served under any name by `sources`)."""
LOCAL_FLAGS = ("--model-repository=", "--http-port=", "--grpc-port=", "--metrics-port=")
RESTRICTED_FLAGS = ("--http-restricted-api=", "--grpc-restricted-protocol=")


@dataclass(frozen=True)
class Installation:
    root: Path
    libraries: Path
    python_bin: Path

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    def args(self) -> list[str]:
        """The flags that point tritonserver at this installation's backends and caches."""
        return [f"--backend-directory={self.root / 'backends'}", f"--cache-directory={self.root / 'caches'}"]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = ":".join(filter(None, [env.get("LD_LIBRARY_PATH"), str(self.libraries)]))
        env["PATH"] = f"{self.python_bin}:{env['PATH']}"
        return env


def install(workdir: Path) -> Installation:
    """A runnable copy of the wheel's Triton under `workdir` (the stub for this Python put in place)."""
    from pytriton.utils import distribution  # noqa: PLC0415 (only the processes that run Triton need it)

    source = distribution.get_root_module_path() / "tritonserver"
    root = workdir / "tritonserver"
    if not root.exists():
        shutil.copytree(source, root, ignore=shutil.ignore_patterns("python_backend_stubs"))
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        shutil.copy(
            distribution.get_stub_path(version), root / "backends" / "python" / "triton_python_backend_stub"
        )
    return Installation(
        root=root, libraries=Path(distribution.get_libs_path()), python_bin=Path(sys.executable).parent
    )


@dataclass(frozen=True)
class RunningTriton:
    http: str
    grpc: str
    metrics: str
    process: Process

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://{self.metrics}/metrics", timeout=5) as response:
            return str(response.read().decode())

    def upstream(self, model: str, openai: str | None = None) -> str:
        """`tollway gateway-config`'s --upstream for a model this Triton serves: MODEL=HOST:PORT:GRPC_PORT,
        and :OPENAI_PORT when its OpenAI server's base URL (`openai`) is given."""
        openai_port = "" if openai is None else ":" + str(urllib.parse.urlsplit(openai).port)
        return f"{model}={self.http}:{self.grpc.rsplit(':', 1)[1]}{openai_port}"


#: The test bed's chat template: each message's text, so that the streamer's answer (the prompt's words
#: again) is known in advance.
CHAT_TEMPLATE = "{% for m in messages %}{{ m.content }} {% endfor %}"


VLLM_COUNTS = {"inputField": "num_input_tokens", "outputField": "num_output_tokens"}


def language_model_document(
    name: str, kind: str, namespace: str = "llm", max_batch_size: int = 0, **spec: Any
) -> dict[str, Any]:
    """A ModelDeployment that speaks the OpenAI API (spec.model.openai `kind` chat, completion or embedding;
    one version unless `spec` says otherwise, CPU, at most 8 tokens an answer unless asked for more)."""
    api = {"kind": kind, **({"chatTemplate": CHAT_TEMPLATE} if kind == "chat" else {})}
    model: dict[str, Any] = {"repository": f"s3://models/{name}", "backend": "python", "openai": api}
    model["maxBatchSize"] = max_batch_size
    return {
        "apiVersion": "tollway.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}"},
        "spec": {
            # the streamer's counts, named as Triton's vLLM backend names them (Triton's generate routes)
            "model": {**model, "tokens": {"defaultMaxTokens": 8, **VLLM_COUNTS}},
            "versions": [{"version": "1"}],
            "triton": {"gpus": 0},
            **spec,
        },
    }


def language_model(name: str, kind: str, **spec: Any) -> TritonServing:
    """language_model_document's model as the operator would serve it: a chat or completion model
    decoupled, so the test bed gives it the streamer; an embedding model the embedder."""
    return plan_serving(parse(ModelDeployment, language_model_document(name, kind, **spec)), (), "unused")


def start_openai_server(
    workdir: Path,
    serving: TritonServing,
    triton: RunningTriton,
    tokenizer: Path | None = None,
    *,
    flags: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> tuple[Process, str]:
    """`tollway openai-server` with the command line the operator renders for `serving`, but for where
    Triton, the chat template and the model's `tokenizer` (None: it has none) are here and a free port, and
    with `flags` added (and `env` in its environment); returns it and its OpenAI base URL."""
    port = free_port()
    local = {"--triton=": triton.grpc, "--port=": str(port), "--host=": "127.0.0.1"}
    local["--tokenizer="] = str(tokenizer or workdir / "no-tokenizer.json")
    if serving.openai is not None and serving.openai.chat_template is not None:
        template = workdir / f"{serving.model.name}-chat-template.jinja"
        template.write_text(serving.openai.chat_template)
        local["--chat-template="] = str(template)
    args = [arg for arg in openai_server_args(serving) if not arg.startswith(tuple(local))]
    command = [
        str(Path(sys.executable).parent / "tollway"),
        *args,
        *(flag + value for flag, value in local.items()),
        *flags,
    ]
    ready = answers_http(f"http://127.0.0.1:{port}/healthz")
    name = f"openai-{serving.model.name}"
    log = workdir / (f"{name}-{port}.log" if flags else f"{name}.log")  # several servers of one model
    return start_process(name, command, log, ready, env=dict(env or {})), f"http://127.0.0.1:{port}/v1"


def executions(triton: RunningTriton, model: str) -> int:
    """How many requests Triton has run `model` for, by its own statistics (every version's successes), once
    the count has stopped moving (Triton counts a request as it releases it, a moment after its last
    response)."""
    counts = [_executions(triton, model)]

    def settled() -> bool:
        time.sleep(0.3)
        counts.append(_executions(triton, model))
        return counts[-1] == counts[-2]

    if not poll(settled, timeout=30, interval=0):
        raise AssertionError(f"Triton's count of {model}'s executions kept moving: {counts}")
    return counts[-1]


def _executions(triton: RunningTriton, model: str) -> int:
    client = tritonclient.http.InferenceServerClient(triton.http)
    try:
        statistics = client.get_inference_statistics(model)
    finally:
        client.close()
    return sum(int(version["inference_stats"]["success"]["count"]) for version in statistics["model_stats"])


def model_repository(
    root: Path,
    serving: TritonServing,
    broken: Iterable[int] = (),
    own_config: str | None = None,
    source: Path | None = None,
) -> Path:
    """The echo model (the streamer for a model Triton serves decoupled, the embedder for an embedding
    model; `source` for any other) under Tollway's model name: a directory per listed version, and
    config.pbtxt as the pod's
    init container writes it (`tollway model-config`: the rendered config merged into the repository's own,
    `own_config`, when it has one)."""
    directory = root / "models" / serving.model.name
    if source is None and serving.model.decoupled:
        source = STREAMER_MODEL
    elif source is None and serving.openai is not None and serving.openai.kind == "embedding":
        source = EMBEDDER_MODEL
    for version in serving.model.versions:
        (directory / str(version)).mkdir(parents=True)
        (directory / str(version) / "model.py").symlink_to(source or ECHO_MODEL)
        if version in broken:
            (directory / str(version) / "broken").touch()
    rendered = root / f"{serving.model.name}.rendered.pbtxt"
    rendered.write_text(config_pbtxt(serving.model))
    if own_config is not None:
        (directory / "config.pbtxt").write_text(own_config)
    if cli.main(["model-config", f"--rendered={rendered}", f"--model-dir={directory}"]) != 0:
        raise AssertionError(f"tollway model-config refused {serving.model.name}'s repository config")
    return root / "models"


def start(
    workdir: Path,
    serving: TritonServing,
    *others: TritonServing,
    broken: Iterable[int] = (),
    http_port: int | None = None,
    admin_key: str | None = None,
    own_config: str | None = None,
    sources: Mapping[str, Path] | None = None,
    grpc_port: int | None = None,
    metrics_port: int | None = None,
) -> RunningTriton:
    """Triton started with Tollway's own command line; only the repository path and ports are local.

    `others` are served beside the first model (one more --load-model each); `broken` versions of the
    first model fail to load; `own_config` is its repository's own config.pbtxt. With `admin_key`, Triton's
    restricted APIs take that key, filled in where the kubelet would fill it in from the model's Secret;
    without, they are left open. `sources` name the model file of some of the others (by model name; the
    rest echo). Its ports are free ones, but for those given. Returns once Triton is live; AssertionError
    with its log if it never is.
    """
    repository = model_repository(workdir, serving, broken, own_config)
    for other in others:
        model_repository(workdir, other, source=(sources or {}).get(other.model.name))
    http, grpc, metrics = http_port or free_port(), grpc_port or free_port(), metrics_port or free_port()
    local = LOCAL_FLAGS if admin_key is not None else LOCAL_FLAGS + RESTRICTED_FLAGS
    args = [
        arg.replace(f"$({KEY_VARIABLE})", admin_key or "")
        for arg in triton_args(serving)
        if not arg.startswith(local)
    ]
    args += [f"--load-model={other.model.name}" for other in others]
    args += [
        f"--model-repository={repository}",
        f"--http-port={http}",
        f"--grpc-port={grpc}",
        f"--metrics-port={metrics}",
        "--http-address=127.0.0.1",
        "--grpc-address=127.0.0.1",
        "--metrics-address=127.0.0.1",
        "--exit-timeout-secs=5",
    ]
    installation = install(workdir)
    # The rendered args begin with the container's "tritonserver"; the wheel's binary takes its place.
    command = [str(installation.binary), *args[1:], *installation.args()]
    live = answers_http(f"http://127.0.0.1:{http}/v2/health/live")
    process = start_process(
        "tritonserver", command, workdir / "triton.log", live, env=installation.environment(), timeout=120
    )
    return RunningTriton(
        http=f"127.0.0.1:{http}", grpc=f"127.0.0.1:{grpc}", metrics=f"127.0.0.1:{metrics}", process=process
    )


@contextmanager
def running(
    workdir: Path,
    serving: TritonServing,
    *others: TritonServing,
    broken: Iterable[int] = (),
    admin_key: str | None = None,
    own_config: str | None = None,
    sources: Mapping[str, Path] | None = None,
) -> Iterator[RunningTriton]:
    """`start`, and stop when the block ends."""
    triton = start(
        workdir, serving, *others, broken=broken, admin_key=admin_key, own_config=own_config, sources=sources
    )
    try:
        yield triton
    finally:
        triton.process.stop()


@contextmanager
def holding(models: Path, name: str) -> Iterator[Callable[[], None]]:
    """Holds the streamer `name`'s streams after their first token until the returned `release` is called
    (or the block ends). A test that releases on receiving the first token proves it was passed on alone:
    had anything between gathered the stream, the token would have come only when the hold gave out, and the
    answer would be short."""
    held = models / name / "held"
    held.touch()

    def release() -> None:
        held.unlink(missing_ok=True)

    try:
        yield release
    finally:
        release()


def held_chat_stream(
    models: Path, name: str, create: Callable[[], Stream[ChatCompletionChunk]]
) -> tuple[Stream[ChatCompletionChunk], list[ChatCompletionChunk]]:
    """Opens a chat stream with `create` while the model `name` is held (see `holding`), releases it when
    the first content arrives, and returns the stream (for its headers) with every chunk it carried."""
    chunks = []
    with holding(models, name) as release:
        stream = create()
        for chunk in stream:
            chunks.append(chunk)
            if chunk.choices and chunk.choices[0].delta.content:
                release()  # the model makes its second token only now: the first came through alone
    return stream, chunks


def contents(chunks: Iterable[ChatCompletionChunk]) -> list[str]:
    """The pieces of text a chat stream's chunks carried, in order."""
    return [
        chunk.choices[0].delta.content for chunk in chunks if chunk.choices and chunk.choices[0].delta.content
    ]


def infer_body(values: int = 4, value: float = 1.0, **parameters: Any) -> dict[str, Any]:
    """A KServe v2 infer request for the echo model: INPUT is `values` times `value`."""
    body: dict[str, Any] = {
        "inputs": [{"name": "INPUT", "shape": [1, values], "datatype": "FP32", "data": [value] * values}]
    }
    if parameters:
        body["parameters"] = parameters
    return body


def outputs(reply: Reply) -> dict[str, Any]:
    return {output["name"]: output["data"] for output in reply.json()["outputs"]}


def usage(reply: Reply) -> dict[str, int]:
    """The tokens the echo model counted for a request (prompt_tokens, completion_tokens)."""
    return dict(json.loads(outputs(reply)["USAGE"][0]))
