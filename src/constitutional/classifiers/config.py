"""The `classifiers:` section of a recipe: the classifier constitution, the synthetic data, both classifiers'
training and the evaluation. `cai clf data | train | eval` read it; flags set its fields by dotted path
(`--data.rounds 3`, `--input.epochs 2`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from constitutional.classifiers.settings import InputClassifierSettings, StreamClassifierSettings
from constitutional.classifiers.synthesize import DataConfig, once
from constitutional.models.spec import ModelSpec


class ClassifierEvalConfig(BaseModel):
    """What `cai clf eval` measures, and on which labelled sets."""

    model_config = ConfigDict(extra="forbid")

    datasets: list[str] = Field(
        default_factory=lambda: ["builtin:clf-eval-inputs", "builtin:clf-eval-outputs"],
        description="Labelled JSONL/CSV sets (prompt or prompt + answer, label, optional category) or builtin:NAME.",
    )
    synthetic_test: bool = Field(default=True, description="Also evaluate on the data stage's test split.")
    keyword_filter: bool = Field(default=True, description="Measure the keyword-filter baseline.")
    policy_judges: list[ModelSpec] = Field(
        default_factory=lambda: [ModelSpec(name="smollm2-135m-instruct"), ModelSpec(name="gemma3-270m")],
        description="Models measured as policy-in-the-prompt judges (the constitution in the prompt).",
    )
    max_examples: int | None = Field(default=None, ge=1, description="Use only the first N items of each set.")

    @field_validator("datasets")
    @classmethod
    def _each_once(cls, sources: list[str]) -> list[str]:
        return once(sources)


class ClassifiersConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    constitution: str = Field(
        default="restricted-permitted", description="Built-in classifier constitution or a path to one (YAML)."
    )
    train_on_contested: bool = Field(
        default=False, description="Train on examples the judge disagreed with too (left out by default)."
    )
    data: DataConfig = Field(default_factory=DataConfig)
    input: InputClassifierSettings = Field(default_factory=InputClassifierSettings)
    output: StreamClassifierSettings = Field(default_factory=StreamClassifierSettings)
    eval: ClassifierEvalConfig = Field(default_factory=ClassifierEvalConfig)
