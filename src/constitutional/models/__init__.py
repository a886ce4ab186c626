"""Models: one protocol, several backends. Embedded short names resolve here and nowhere else."""

from __future__ import annotations

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
    "load_model",
    "model_spec",
]


def load_model(spec: ModelSpec) -> LanguageModel:
    """Build the backend a spec names; weights load from safetensors only."""
    if spec.backend == "openai":
        from constitutional.models.openai_api import OpenAIModel

        return OpenAIModel(spec)
    from constitutional.models.embedded import resolve
    from constitutional.models.hf import TransformersModel

    return TransformersModel.load(spec, resolve(spec.name))


def model_spec(**fields) -> ModelSpec:
    """A ModelSpec from command-line options; a bad value is an InputError naming the option."""
    from pydantic import ValidationError

    from constitutional.errors import from_validation

    try:
        return ModelSpec(**fields)
    except ValidationError as err:
        raise from_validation(err, hint="see --help for the accepted values") from None
