"""Models: one protocol, several backends. Embedded short names resolve here and nowhere else."""

from __future__ import annotations

from pathlib import Path

from constitutional.models.base import HUMAN_TURN, LanguageModel, Message, Prompt, SamplingParams
from constitutional.models.embedded import EMBEDDED
from constitutional.models.spec import ModelSpec

__all__ = [
    "EMBEDDED",
    "HUMAN_TURN",
    "LanguageModel",
    "Message",
    "ModelSpec",
    "Prompt",
    "SamplingParams",
    "check_model",
    "load_model",
    "model_spec",
]


def load_model(spec: ModelSpec) -> LanguageModel:
    """Build the backend a spec names; weights load from safetensors only, code shipped with them only if allowed."""
    if spec.backend == "openai":
        from constitutional.models.openai_api import OpenAIModel

        return OpenAIModel(spec)
    if spec.backend == "llamacpp":
        from constitutional.models.embedded import gguf_file
        from constitutional.models.llamacpp import LlamaCppModel

        return LlamaCppModel.load(spec, gguf_file(spec.name), n_ctx=spec.context_length)
    from constitutional.models.embedded import resolve

    path = resolve(spec.name)  # an unknown name fails here, before torch is even imported
    check_folder(path, spec)
    if spec.backend == "vllm":
        from constitutional.models.vllm_engine import VLLMModel

        return VLLMModel.load(spec, path)
    from constitutional.models.hf import TransformersModel

    try:
        return TransformersModel.load(spec, path)
    except ValueError as err:
        if "trust_remote_code" not in str(err):
            raise
        raise _remote_code(spec, None) from None


def check_model(spec: ModelSpec, field: str | None = None) -> None:
    """Refuse, without loading anything, a model that cannot load: the openai backend without a server address;
    a missing local folder, or one that is not a model or ships code while trust_remote_code is off; a Hugging
    Face id not in the local cache; an embedded model whose package is missing. `field` names the recipe's
    place for the model (`models.policy`) in the error.

    A bare word that is none of these is refused by `load_model` at once rather than here, as a substitute
    loader (tests use them) may give such names a meaning.
    """
    from constitutional.errors import InputError
    from constitutional.models import embedded

    where = f"{field}." if field else ""
    if spec.backend == "openai":
        if not spec.base_url:
            raise InputError(
                "the openai backend needs a server address",
                field=f"{where}base_url",
                hint="set base_url, e.g. http://127.0.0.1:8000/v1",
            )
        return
    name = spec.name
    if spec.backend == "llamacpp":
        if name not in embedded.EMBEDDED and not Path(name).expanduser().is_file():
            err = embedded.unknown_model(name, "the llamacpp backend loads a .gguf file or an embedded model")
            raise InputError(str(err).split("\n")[0], field=f"{where}name", hint=err.hint)
        return
    if spec.backend not in ("transformers", "vllm"):
        return  # another backend checks its own names when it loads
    if name in embedded.EMBEDDED:
        embedded.check_embedded(name)
        return
    try:
        if "\0" in name or Path(name).expanduser().exists() or embedded.looks_like_path(name) or "/" in name:
            path = embedded.resolve(name)
        else:
            path = embedded.cached_snapshot(name)
    except InputError as err:
        raise InputError(str(err).split("\n")[0], field=f"{where}name", hint=err.hint) from None
    if path is not None:
        check_folder(path, spec, field)


def check_folder(path: str, spec: ModelSpec, field: str | None = None) -> None:
    """A model folder holds config.json and safetensors weights, and runs no shipped code unless allowed."""
    from constitutional.errors import InputError

    folder = Path(path)
    where = f"{field}.name" if field else None
    if not folder.is_dir():
        raise InputError(f"cannot load model '{spec.name}': not a folder", field=where, hint="give a model folder")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise InputError(
            f"cannot load model '{spec.name}': {folder} has no config.json, so it is not a model folder",
            field=where,
            hint="give the folder `save_pretrained` wrote (config.json, *.safetensors, tokenizer files)",
        )
    if not any(folder.glob("*.safetensors")) and not (folder / "model.safetensors.index.json").is_file():
        raise InputError(
            f"cannot load model '{spec.name}': {folder} has no *.safetensors weights",
            field=where,
            hint="weights load from safetensors only (pickle .bin files can run code): convert them with "
            "`save_pretrained(..., safe_serialization=True)`",
        )
    if not spec.trust_remote_code and _needs_remote_code(config_file):
        raise _remote_code(spec, field)


def _needs_remote_code(config_file: Path) -> bool:
    """Whether transformers would have to run Python files shipped with the model to build it."""
    import json

    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # transformers itself reports an unreadable config when loading
    if not isinstance(config, dict) or not config.get("auto_map"):
        return False
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return config.get("model_type") not in CONFIG_MAPPING_NAMES


def _remote_code(spec: ModelSpec, field: str | None):
    from constitutional.errors import InputError

    role = field or "models.<role>"
    return InputError(
        f"cannot load model '{spec.name}': it ships its own Python code, and trust_remote_code is off",
        field=f"{field}.trust_remote_code" if field else None,
        hint=f"read that code first; to run it, set `{role}.trust_remote_code: true` in the recipe "
        f"(or pass --{role}.trust-remote-code true)",
    )


def model_spec(**fields) -> ModelSpec:
    """A ModelSpec from command-line options; a bad value is an InputError naming the option."""
    from pydantic import ValidationError

    from constitutional.errors import from_validation

    try:
        return ModelSpec(**fields)
    except ValidationError as err:
        raise from_validation(err, hint="see --help for the accepted values") from None
