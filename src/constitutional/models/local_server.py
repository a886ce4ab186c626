"""A server run as a child process on loopback for as long as a block lasts: a model server (vLLM's, llama.cpp's) for
the `openai` backend, or the guard and its stand-ins in tests and benchmarks.

It starts in a process group of its own, so that stopping it stops what it started too (vLLM's engine runs in a child
process): SIGTERM to the group, SIGKILL if it has not ended within a grace period.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx2

from constitutional.errors import ModelUnavailableError


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (and, just released, nothing will for a while)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def answers(url: str) -> bool:
    """Whether `url` answers 200 now."""
    try:
        return httpx2.get(url, timeout=2).status_code == 200
    except httpx2.TransportError:
        return False


@contextlib.contextmanager
def server_process(
    command: list[str],
    ready_url: str,
    log_path: Path,
    timeout: float = 120.0,
    *,
    env: Mapping[str, str] | None = None,
    name: str | None = None,
) -> Iterator[subprocess.Popen]:
    """Start `command` logging to `log_path`, wait until `ready_url` answers 200, stop it when the block ends.

    A server that exits or is not healthy within `timeout` seconds raises ModelUnavailableError with the end of its
    log, which says why; `name` (by default the command's start) names it there.
    """
    name = name or " ".join(command[:4])
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not answers(ready_url):
            if process.poll() is not None:
                raise ModelUnavailableError(
                    f"{name} exited with {process.returncode} while starting (log: {log_path}):\n{_tail(log_path)}"
                )
            if time.monotonic() > deadline:
                raise ModelUnavailableError(
                    f"{name} was not healthy after {timeout:.0f} s (log: {log_path}):\n{_tail(log_path)}"
                )
            time.sleep(0.3)
        yield process
    finally:
        _stop(process)


def _stop(process: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM to the server's process group (a server shuts its workers down), SIGKILL if it has not ended."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:]
