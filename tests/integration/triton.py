"""The real Triton server (from nvidia-pytriton) on a model repository built from what Tollway renders."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "hack"))

from tollway.ir.serving import TritonServing  # noqa: E402
from tollway.render.model_config import config_pbtxt  # noqa: E402
from tollway.render.triton import triton_args  # noqa: E402

import triton_local  # noqa: E402  (hack/ is not a package)
from dataplane import free_port  # noqa: E402

ECHO_MODEL = ROOT / "tests" / "models" / "echo" / "model.py"
LOCAL_FLAGS = ("--model-repository=", "--http-port=", "--grpc-port=", "--metrics-port=")


@dataclass(frozen=True)
class RunningTriton:
    http: str
    grpc: str
    metrics: str
    log: Path

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://{self.metrics}/metrics", timeout=5) as response:
            return str(response.read().decode())


def model_repository(root: Path, serving: TritonServing, broken: Iterable[int] = ()) -> Path:
    """The echo model under Tollway's model name: a directory per listed version, and the rendered config."""
    directory = root / "models" / serving.model.name
    for version in serving.model.versions:
        (directory / str(version)).mkdir(parents=True)
        (directory / str(version) / "model.py").symlink_to(ECHO_MODEL)
        if version in broken:
            (directory / str(version) / "broken").touch()
    (directory / "config.pbtxt").write_text(config_pbtxt(serving.model))
    return root / "models"


@contextmanager
def running(
    workdir: Path, serving: TritonServing, *others: TritonServing, broken: Iterable[int] = ()
) -> Iterator[RunningTriton]:
    """Triton started with Tollway's own command line; only the repository path and ports are local.

    `others` are served beside the first model (one more --load-model each); `broken` versions of the
    first model fail to load.
    """
    repository = model_repository(workdir, serving, broken)
    for other in others:
        model_repository(workdir, other)
    http, grpc, metrics = free_port(), free_port(), free_port()
    args = [arg for arg in triton_args(serving) if not arg.startswith(LOCAL_FLAGS)]
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
    log = workdir / "triton.log"
    process = triton_local.start(triton_local.install(workdir), args, log)
    try:
        live = f"http://127.0.0.1:{http}/v2/health/live"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"tritonserver exited {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(live, timeout=1):
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise AssertionError(f"tritonserver not live after 120s:\n{log.read_text()[-3000:]}")
        yield RunningTriton(
            http=f"127.0.0.1:{http}", grpc=f"127.0.0.1:{grpc}", metrics=f"127.0.0.1:{metrics}", log=log
        )
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
