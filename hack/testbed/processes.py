"""Starting the test bed's processes: free ports, a process started and waited for until it answers (or a
loud failure with its log), waiting for a condition, and the Go tools hack/build-tools.sh builds."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")

#: Ports handed to servers come from below the kernel's ephemeral range (32768 and up), so that the
#: outgoing connections other processes open meanwhile cannot take one before its server binds it; and
#: above the local control plane's fixed ports (up to 20257).
PORT_RANGE = (21000, 32000)


#: Ports this process handed out already: a port picked now may be bound only much later (the demo gives
#: Prometheus's to the operator before starting it), so it is never handed out twice.
_handed_out: set[int] = set()


def free_ports(count: int) -> int:
    """The first of `count` consecutive ports that are free on every address now (and not handed out)."""
    while True:
        first = random.randrange(PORT_RANGE[0], PORT_RANGE[1] - count)
        block = set(range(first, first + count))
        if block & _handed_out:
            continue
        sockets = []
        try:
            for port in sorted(block):
                probe = socket.socket()
                sockets.append(probe)
                probe.bind(("0.0.0.0", port))
            _handed_out.update(block)
            return first
        except OSError:
            continue
        finally:
            for probe in sockets:
                probe.close()


def free_port() -> int:
    return free_ports(1)


def answers_http(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    return check


def answers_tcp(port: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    return check


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up (a crash, an OOM kill, a node lost)."""
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


def start(
    name: str,
    command: list[str],
    log: Path,
    ready: Callable[[], bool],
    *,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> Process:
    """Start `command` (output to `log`), wait until `ready()`; AssertionError with the log if it never is."""
    with log.open("ab") as out:
        popen = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    process = Process(name, popen, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise AssertionError(f"{name} exited with {popen.returncode}:\n{process.tail()}")
        if ready():
            return process
        time.sleep(0.2)
    process.stop()
    raise AssertionError(f"{name} did not answer within {timeout:.0f}s:\n{process.tail()}")


def poll(probe: Callable[[], T | None], timeout: float, interval: float = 0.5) -> T | None:
    """Call `probe` until it returns something truthy or `timeout` seconds have passed; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(interval)


def tool_binary(tool: str, binary: str) -> Path:
    """A Go tool built by hack/build-tools.sh (pinned, cached); AssertionError with its output on failure."""
    built = subprocess.run(
        [str(ROOT / "hack" / "build-tools.sh"), tool], capture_output=True, text=True, check=False
    )
    if built.returncode != 0:
        raise AssertionError(f"hack/build-tools.sh {tool} failed:\n{built.stderr[-4000:]}")
    return Path(built.stdout.strip()) / binary
