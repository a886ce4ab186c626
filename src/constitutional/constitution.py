"""A constitution: the principles that steer critique, revision and comparison, with few-shot demonstrations.

Constitutions are YAML files validated by the pydantic models below; the built-ins live in
`data/constitutions/`. Principles are data, never code.
"""

from __future__ import annotations

import random
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from constitutional.errors import InputError
from constitutional.yamlfile import load_yaml

_BUILTIN_DIR = resources.files("constitutional") / "data" / "constitutions"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CritiqueRevisionPrinciple(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$", description="Stable identifier, recorded with every step.")
    critique: str = Field(min_length=10, description="Request that asks the model to critique its last answer.")
    revision: str = Field(min_length=10, description="Request that asks the model to rewrite the answer.")


class ComparisonPrinciple(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    comparison: str = Field(min_length=10, description="Multiple-choice question asked of the feedback model.")


class CritiqueRevisionDemo(_Strict):
    """A worked critique -> revision example, shown before the real conversation."""

    prompt: str = Field(min_length=1)
    response: str = Field(min_length=1)
    principle: str = Field(description="Id of the critique/revision principle this example follows.")
    critique: str = Field(min_length=1)
    revision: str = Field(min_length=1)


class ComparisonDemo(_Strict):
    """A worked comparison; its principle is drawn at random each time it is shown."""

    prompt: str = Field(min_length=1)
    a: str = Field(min_length=1)
    b: str = Field(min_length=1)
    preferred: Literal["A", "B"]


class Demonstrations(_Strict):
    critique_revision: list[CritiqueRevisionDemo] = Field(default_factory=list)
    comparison: list[ComparisonDemo] = Field(default_factory=list)


class Constitution(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    version: str = Field(min_length=1)
    description: str = Field(min_length=1)
    critique_revision: list[CritiqueRevisionPrinciple] = Field(min_length=1)
    comparison: list[ComparisonPrinciple] = Field(min_length=1)
    demonstrations: Demonstrations = Field(default_factory=Demonstrations)

    @field_validator("critique_revision", "comparison")
    @classmethod
    def _unique_ids(cls, principles: list) -> list:
        seen: set[str] = set()
        for principle in principles:
            if principle.id in seen:
                raise ValueError(f"duplicate principle id '{principle.id}'")
            seen.add(principle.id)
        return principles

    @model_validator(mode="after")
    def _demos_name_known_principles(self) -> Constitution:
        known = {p.id for p in self.critique_revision}
        for demo in self.demonstrations.critique_revision:
            if demo.principle not in known:
                raise ValueError(f"demonstration names unknown principle '{demo.principle}'; known: {sorted(known)}")
        return self

    @property
    def tag(self) -> str:
        """`name@version`, stamped on every record for provenance."""
        return f"{self.name}@{self.version}"

    def principle(self, principle_id: str) -> CritiqueRevisionPrinciple:
        return next(p for p in self.critique_revision if p.id == principle_id)

    def restricted_to(self, count: int | None, rng: random.Random) -> Constitution:
        """A copy using only `count` critique/revision principles (the paper's 'number of principles' study)."""
        if count is None or count >= len(self.critique_revision):
            return self
        kept = rng.sample(self.critique_revision, count)
        kept_ids = {p.id for p in kept}
        demos = [d for d in self.demonstrations.critique_revision if d.principle in kept_ids]
        return self.model_copy(
            update={
                "critique_revision": kept,
                "demonstrations": self.demonstrations.model_copy(update={"critique_revision": demos}),
            }
        )


def builtin_names() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in _BUILTIN_DIR.iterdir() if p.name.endswith(".yaml"))


def load_constitution(name_or_path: str | Path) -> Constitution:
    """Load a built-in constitution by name, or any YAML file by path."""
    path = Path(name_or_path)
    if not path.suffix and str(name_or_path) in builtin_names():
        path = Path(str(_BUILTIN_DIR / f"{name_or_path}.yaml"))
    elif not path.exists():
        raise InputError(
            f"unknown constitution '{name_or_path}'",
            hint=f"use a built-in name ({', '.join(builtin_names())}) or a path to a YAML file",
        )
    document = load_yaml(path)
    if not isinstance(document.data, dict):
        raise InputError("a constitution must be a YAML mapping", path=path, line=1)
    return document.validate(Constitution)
