"""How a recipe names a model: which backend, which weights, and the backend's knobs."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ModelSpec(BaseModel):
    """One model role (policy, feedback, judge) in a recipe."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        default="smollm2-135m-instruct",
        description="Embedded short name, Hugging Face id, local path, or the served model name (openai backend).",
    )
    backend: Literal["transformers", "openai", "llamacpp", "vllm"] = Field(
        default="transformers",
        description="transformers (safetensors), openai (a server), llamacpp (a GGUF file run in-process), vllm "
        "(vLLM's offline engine, the optional extra `constitutional[vllm]`).",
    )
    # transformers backend
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="auto: bfloat16 on CPU and on GPUs that support it, else float16/float32."
    )
    device: str = Field(default="auto", description="auto, cpu, cuda, cuda:1, mps ...")
    batch_size: int = Field(default=16, ge=1, description="Sequences per forward pass.")
    trust_remote_code: bool = Field(default=False, description="Run code shipped with the weights (off by default).")
    # vllm backend
    tensor_parallel_size: int = Field(default=1, ge=1, description="vllm: GPUs one copy of the model is split across.")
    # llamacpp and vllm backends
    context_length: int = Field(
        default=4096, ge=64, description="llamacpp, vllm: tokens the context holds, prompt and continuation together."
    )
    # openai backend
    base_url: str | None = Field(default=None, description="e.g. http://127.0.0.1:8000/v1 (vLLM, llama.cpp, Ollama).")
    api_key_env: str = Field(default="OPENAI_API_KEY", description="Environment variable holding the API key.")
    timeout: float = Field(default=120.0, gt=0, description="Seconds per request.")
    max_retries: int = Field(default=5, ge=0, description="Retries with backoff on connection errors, 429 and 5xx.")
    concurrency: int = Field(default=8, ge=1, description="Requests in flight at once.")
