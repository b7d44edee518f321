"""Run the real Triton Inference Server on this machine, on CPU, from the PyPI wheel nvidia-pytriton.

The wheel carries the `tritonserver` binary, its Python backend and one backend stub per Python version;
PyTriton itself assembles them at run time. This does the same for a plain `tritonserver` command line,
so tests and the demo can start Triton with exactly the arguments and model config Tollway renders.

Pitfall: the stub links Debian's libpython3.11, so the venv must come from /usr/bin/python3 (hack/setup
does that); models then fail to load from other 3.11 builds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


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


def start(installation: Installation, args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start tritonserver with Tollway's rendered `args` (the leading "tritonserver" is replaced)."""
    command = [str(installation.binary), *args[1:], *installation.args()]
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=installation.environment())
