"""The comparison spec (`CompareSpec`, read by `load_spec`) and what it fixes: the two runs' recipes and the
comparison's own files.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from constitutional.collective import CollectiveConfig
from constitutional.errors import InputError
from constitutional.models.spec import ModelSpec
from constitutional.recipe import DEMO_RECIPE, Recipe, load_recipe
from constitutional.stages import EVALUATE, STAGES
from constitutional.yamlfile import YamlDocument, load_yaml

# The two runs, and the two constitutions; each run is named after the constitution it was trained on.
COLLECTIVE, BUILTIN = "collective", "builtin"
SIDES = (COLLECTIVE, BUILTIN)
Side = Literal["collective", "builtin"]
# Recipe keys a spec's overrides must not set: they are what tells the two runs apart.
PER_RUN_KEYS = ("run_dir", "constitution")
# Where a comparison keeps its own files, relative to its run directory; the two runs are in `collective/`, `builtin/`.
FILES = {
    "spec": "comparison.json",
    "constitution": "constitution/collective.yaml",
    "provenance": "constitution/collective.provenance.json",
    "build_page": "constitution/collective.html",
    "build_stamp": "constitution/build.json",
    "records": "compare",
    "summary": "compare/summary.json",
    "page": "report.html",
}


# ---- the spec ---------------------------------------------------------------------------------------------------


class AdherenceConfig(BaseModel):
    """How much of each constitution is checked, on how many answers."""

    model_config = ConfigDict(extra="forbid")

    principles: int = Field(
        default=4, ge=1, description="Comparison principles drawn per constitution (seeded by the recipe's seed)."
    )
    answers: int = Field(
        default=12,
        ge=1,
        description="Held-out answers per model (the evaluate stage's, at its first temperature), red-team and "
        "helpfulness prompts alternately; the same prompts for both models.",
    )
    chunk_size: int = Field(default=16, ge=1, description="Answers x principles per judge call and per write.")
    bootstrap: int = Field(default=1000, ge=10, description="Bootstrap resamples (over answers) of each interval.")
    confidence: float = Field(default=0.95, gt=0.0, lt=1.0, description="Confidence level of the intervals.")


class CompareSpec(BaseModel):
    """A comparison: one conversation's export, one base recipe, two runs that differ only in the constitution.

    Paths are relative to the directory the command runs in, as in recipes.
    """

    model_config = ConfigDict(extra="forbid")

    export: str = Field(description="The conversation: a Polis export folder, or plain statements + votes files.")
    recipe: str | None = Field(default=None, description="Base recipe of both runs; default the packaged demo.")
    builtin: str = Field(default="harmless", description="The constitution to compare with: built-in name or path.")
    run_dir: str = Field(default="runs/ccai", description="Holds the constitution, both runs and the comparison.")
    stages: list[str] | None = Field(
        default=None, description="Pipeline stages run in both (default all); must include evaluate."
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Recipe values set in both runs (nested like a recipe), e.g. {sl: {max_prompts: 8}}.",
    )
    collective: CollectiveConfig = Field(
        default_factory=CollectiveConfig, description="How the constitution is built (as `cai ccai build`)."
    )
    writer: ModelSpec | None = Field(default=None, description="A model that drafts the principles (else templates).")
    adherence: AdherenceConfig = Field(default_factory=AdherenceConfig)

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, stages: list[str] | None) -> list[str] | None:
        if stages is None:
            return None
        unknown = [name for name in stages if name not in STAGES]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; stages are: {', '.join(STAGES)}")
        if EVALUATE.name not in stages:
            raise ValueError(f"the comparison reads the {EVALUATE.name} stage's answers and Elo: include it")
        return stages

    @property
    def recipe_path(self) -> Path:
        return Path(self.recipe) if self.recipe is not None else DEMO_RECIPE


def load_spec(path: str | Path, *, export: str | Path | None = None, run_dir: str | Path | None = None) -> CompareSpec:
    """A comparison spec from YAML; `export` and `run_dir` replace the file's. Errors name the file and line."""
    document = load_yaml(path)
    if not isinstance(document.data, dict):
        raise InputError("a comparison spec must be a YAML mapping", path=path, line=1)
    data = dict(document.data)
    data.update({k: str(v) for k, v in (("export", export), ("run_dir", run_dir)) if v is not None})
    spec = document.validate(CompareSpec, data)
    _check_overrides(spec, document)
    return spec


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        inner = merged.get(key)
        merged[key] = _merge(inner, value) if isinstance(value, dict) and isinstance(inner, dict) else value
    return merged


def _within(data: Any, loc: Sequence[str | int]) -> bool:
    """Whether a pydantic error location points into `data` (so the value came from there)."""
    for key in loc:
        try:
            data = data[key]
        except (KeyError, IndexError, TypeError):
            return False
    return True


def _check_overrides(spec: CompareSpec, document: YamlDocument | None = None) -> None:
    """The overrides leave the per-run keys alone and, on the base recipe, make a valid recipe."""
    where = document.path if document else None
    for key in PER_RUN_KEYS:
        if key in spec.overrides:
            raise InputError(
                f"'{key}' is set per run by the comparison, not by overrides",
                path=where,
                line=document.line_of(("overrides", key)) if document else None,
                field=f"overrides.{key}",
                hint="the two runs differ only in the constitution; set the spec's run_dir / builtin instead",
            )
    base = load_yaml(spec.recipe_path)
    if not isinstance(base.data, dict):
        raise InputError("a recipe must be a YAML mapping", path=base.path, line=1)
    merged = _merge(base.data, spec.overrides)
    try:
        Recipe.model_validate(merged)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ("overrides", *first["loc"])
        if not (first["loc"] and _within(spec.overrides, first["loc"])):
            base.validate(Recipe, merged)  # the base recipe's own value: named in its file
        raise InputError(
            first["msg"],
            path=where,
            line=document.line_of(loc) if document else None,
            field=".".join(map(str, loc)),
            hint="overrides take the recipe's sections and fields (see `cai run --help`)",
        ) from None


# ---- the two runs -----------------------------------------------------------------------------------------------


def location(spec: CompareSpec, key: str) -> Path:
    """One of the comparison's own files (a key of FILES), or the run directory of one side."""
    return Path(spec.run_dir) / (key if key in SIDES else FILES[key])


def recipes(spec: CompareSpec) -> dict[str, Recipe]:
    """The two runs' recipes: the base recipe with the spec's overrides, differing only in constitution and run_dir."""
    constitutions = {COLLECTIVE: str(location(spec, "constitution")), BUILTIN: spec.builtin}
    return {
        side: load_recipe(
            spec.recipe_path,
            _merge(spec.overrides, {"run_dir": str(location(spec, side)), "constitution": constitutions[side]}),
        )
        for side in SIDES
    }
