"""Recipes: one YAML file names the models, the constitution and every stage's settings.

Unknown keys are errors (with file and line). Command-line flags override recipe values: `--num-revisions 2`
sets a field of the command's own section, a dotted path (`--models.policy.name gpt2`) any field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from constitutional.classifiers.config import ClassifiersConfig
from constitutional.comparison import FeedbackConfig
from constitutional.engine.config import EngineConfig
from constitutional.errors import InputError, from_validation
from constitutional.evaluate.config import EvalConfig
from constitutional.models.spec import ModelSpec
from constitutional.pairs import PairsConfig
from constitutional.preference import PMConfig
from constitutional.rl import RLConfig
from constitutional.sl import SLConfig
from constitutional.sl_train import SLTrainConfig
from constitutional.yamlfile import load_yaml

# The laptop recipe ships inside the package so `cai demo` works wherever the package is installed;
# recipes/demo.yaml in the repository is a link to it.
DEMO_RECIPE = Path(__file__).parent / "data" / "recipes" / "demo.yaml"


class Roles(BaseModel):
    """Each role names its own model: the policy being aligned is never its own judge by accident."""

    model_config = ConfigDict(extra="forbid")

    policy: ModelSpec = Field(default_factory=ModelSpec)
    feedback: ModelSpec = Field(default_factory=lambda: ModelSpec(name="gemma3-270m"))
    judge: ModelSpec = Field(
        default_factory=lambda: ModelSpec(name="gemma3-270m"),
        description="Compares and rates answers in evaluation; re-labels a sample of the classifier data.",
    )
    generator: ModelSpec = Field(
        default_factory=ModelSpec, description="Writes the classifiers' synthetic requests and answers."
    )


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_dir: str = Field(default="runs/default", description="Where every stage writes its records.")
    seed: int = Field(default=0, description="Seeds principle draws, sampling and splits; kept in the manifest.")
    constitution: str = Field(default="harmless", description="Built-in name or path to a constitution YAML.")
    models: Roles = Field(default_factory=Roles)
    sl: SLConfig = Field(default_factory=SLConfig)
    sl_train: SLTrainConfig = Field(default_factory=SLTrainConfig)
    sample: PairsConfig = Field(default_factory=PairsConfig)
    label: FeedbackConfig = Field(default_factory=FeedbackConfig)
    pm: PMConfig = Field(default_factory=PMConfig)
    rl: RLConfig = Field(default_factory=RLConfig)
    evaluate: EvalConfig = Field(default_factory=EvalConfig)
    classifiers: ClassifiersConfig = Field(default_factory=ClassifiersConfig)
    engine: EngineConfig = Field(
        default_factory=EngineConfig, description="Where the model calls of the generation stages run."
    )


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        data = data.setdefault(part, {})
        if not isinstance(data, dict):
            raise InputError(f"cannot set '{dotted}': '{part}' is not a section", field=dotted)
    data[leaf] = value


def _field_type(model: type[BaseModel], dotted: str) -> Any:
    """The annotation of the field at a dotted path, or None when there is no such field."""
    current: Any = model
    for part in dotted.split("."):
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return None
        current = current.model_fields[part].annotation
    return current


class Overrides(dict):
    """Command-line overrides as a nested dict, remembering the flag and text that set each dotted path."""

    def __init__(self):
        super().__init__()
        self.flags: dict[str, tuple[str, str]] = {}

    def flag_for(self, loc: tuple) -> tuple[str, str, str] | None:
        """(dotted path, flag, text) of the override a validation error location falls under, if any."""
        parts = [str(part) for part in loc]
        for dotted, (flag, text) in self.flags.items():
            if parts[: len(dotted.split("."))] == dotted.split("."):
                return dotted, flag, text
        return None


def _parse_value(flag: str, text: str, annotation: Any) -> Any:
    """YAML for numbers, booleans, lists; text fields keep the text as typed (`--run-dir 2024-01-01`)."""
    if annotation in (str, str | None):
        return None if annotation is not str and text in ("null", "~") else text
    try:
        return yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, RecursionError):
        raise InputError(
            f"{flag} {text!r}: not a value",
            field=flag.removeprefix("--"),
            hint="give a number, true/false, null, or a YAML list such as '[a, b]'",
        ) from None


def parse_overrides(args: list[str], section: str | None) -> Overrides:
    """`--key value` pairs into a nested dict; a bare key is looked up in `section` first."""
    overrides = Overrides()
    rest = list(args)
    while rest:
        flag = rest.pop(0)
        if not flag.startswith("--") or not rest:
            raise InputError(f"expected '--field value', got '{flag}'", hint="see --help for the fields you can set")
        key = flag[2:].replace("-", "_")
        if section and _field_type(Recipe, f"{section}.{key}") is not None:
            key = f"{section}.{key}"
        annotation = _field_type(Recipe, key)
        if annotation is None:
            raise InputError(f"unknown option '{flag}'", field=key, hint="see --help for the fields you can set")
        text = rest.pop(0)
        _set(overrides, key, _parse_value(flag, text, annotation))
        overrides.flags[key] = (flag, text)
    return overrides


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = (
            _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
        )
    return merged


def load_recipe(path: str | Path | None, overrides: dict[str, Any] | None = None) -> Recipe:
    """A recipe from YAML (or the defaults) with command-line overrides applied; validated.

    A bad value is blamed on where it came from: the flag that set it, else the recipe's file and line.
    """
    data: dict[str, Any] = {}
    document = None
    if path is not None:
        document = load_yaml(path)
        if not isinstance(document.data, dict):
            raise InputError("a recipe must be a YAML mapping", path=path, line=1)
        data = document.data
    merged = _merge(data, overrides or {})
    try:
        return Recipe.model_validate(merged)
    except ValidationError as err:
        first = err.errors()[0]
        from_flag = overrides.flag_for(first["loc"]) if isinstance(overrides, Overrides) else None
        if from_flag is not None:
            dotted, flag, text = from_flag
            raise InputError(
                f"{flag} {text!r}: {first['msg']}", field=dotted, hint="fix this flag's value (see --help)"
            ) from None
        if document is not None:
            raise document.error(err) from None
        raise from_validation(err) from None


def describe_fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str]]:
    """(flag, default, help) for every field, nested sections flattened, for --help texts."""
    rows = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        flag = f"{prefix}{name}".replace("_", "-")
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows += describe_fields(annotation, f"{flag}.")
        else:
            default = field.get_default(call_default_factory=True)
            rows.append((f"--{flag}", repr(default), field.description or ""))
    return rows
