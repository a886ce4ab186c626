"""A server process around a block: yielded once it answers, stopped with what it started; a server that dies while
starting is reported with its log (the slow-start and exit paths on vLLM's launcher: tests/test_vllm.py)."""

from __future__ import annotations

import os
import sys
import time

import httpx2
import pytest

from constitutional.errors import ModelUnavailableError
from constitutional.models.local_server import answers, free_port, server_process


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_server_answers_in_the_block_and_is_stopped_with_its_children_after(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    child = tmp_path / "child.pid"
    # A shell that starts a child (as vLLM's server starts its engine), then becomes the HTTP server.
    script = f"sleep 300 & echo $! > {child}; exec {sys.executable} -m http.server {port} --bind 127.0.0.1"
    with server_process(["sh", "-c", script], url, tmp_path / "server.log", timeout=30) as process:
        assert httpx2.get(url).status_code == 200
        sleeper = int(child.read_text())
        assert alive(sleeper)
    assert process.poll() is not None and not answers(url)
    deadline = time.monotonic() + 5
    while alive(sleeper) and time.monotonic() < deadline:  # once killed, the orphan is reaped by init
        time.sleep(0.05)
    assert not alive(sleeper)


def test_a_server_that_exits_while_starting_is_named_with_its_log(tmp_path):
    command = ["sh", "-c", "echo 'no such model' && exit 4"]
    with (
        pytest.raises(ModelUnavailableError, match=r"the test server exited with 4(.|\n)*no such model"),
        server_process(command, f"http://127.0.0.1:{free_port()}/", tmp_path / "log", name="the test server"),
    ):
        pass
