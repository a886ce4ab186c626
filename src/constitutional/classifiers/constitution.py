"""A classifier constitution: which content a guard must flag (restricted) and which nearby content it must let
through (permitted), each category with a definition and example requests.

It is YAML validated by the pydantic models below, with errors that name the file and line; the built-in lives in
`data/classifiers/`. The synthetic data stage seeds its generator with the examples, the judge reads the
definitions, and the evaluation reports per category.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from constitutional.errors import InputError
from constitutional.yamlfile import YamlDocument, load_yaml

_BUILTIN_DIR = resources.files("constitutional") / "data" / "classifiers"
# Built-in name -> file in data/classifiers/.
BUILTINS = {"restricted-permitted": "constitution.yaml"}
# Category of requests that come from outside the constitution (general helpful prompts).
GENERAL = "general"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RestrictedCategory(_Strict):
    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="snake_case, unique; recorded on every example.")
    definition: str = Field(min_length=10, description="What content of this category is, in one paragraph.")
    uplift: str = Field(min_length=10, description="What counts as real help toward the harm, and what does not.")
    examples: list[str] = Field(min_length=1, description="Requests that must be flagged; seeds for the generator.")

    @field_validator("examples")
    @classmethod
    def _no_blank(cls, examples: list[str]) -> list[str]:
        return _non_blank(examples)


class PermittedCategory(_Strict):
    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    definition: str = Field(min_length=10)
    examples: list[str] = Field(min_length=1, description="Near-neighbour requests that must NOT be flagged.")

    @field_validator("examples")
    @classmethod
    def _no_blank(cls, examples: list[str]) -> list[str]:
        return _non_blank(examples)


def _non_blank(examples: list[str]) -> list[str]:
    for number, example in enumerate(examples):
        if not example.strip():
            raise ValueError(f"example {number} is empty")
    return examples


class ClassifierConstitution(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    version: str = Field(min_length=1)
    description: str = Field(min_length=1)
    restricted: list[RestrictedCategory] = Field(min_length=1)
    permitted: list[PermittedCategory] = Field(min_length=1)

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, version: object) -> object:
        return str(version) if isinstance(version, int) and not isinstance(version, bool) else version

    @model_validator(mode="after")
    def _unique_ids(self) -> ClassifierConstitution:
        seen: set[str] = set()
        for category in self.categories:
            if category.id in seen or category.id == GENERAL:
                raise ValueError(f"category id '{category.id}' is used twice (or is the reserved '{GENERAL}')")
            seen.add(category.id)
        return self

    @property
    def tag(self) -> str:
        """`name@version`, stamped on every example's provenance."""
        return f"{self.name}@{self.version}"

    @property
    def categories(self) -> list[RestrictedCategory | PermittedCategory]:
        return [*self.restricted, *self.permitted]

    def category(self, category_id: str) -> RestrictedCategory | PermittedCategory:
        return next(c for c in self.categories if c.id == category_id)

    def label(self, category_id: str) -> Literal[0, 1]:
        """1 for a restricted category, 0 for a permitted one or for general requests."""
        return 1 if any(c.id == category_id for c in self.restricted) else 0


def builtin_names() -> list[str]:
    return sorted(BUILTINS)


def load_classifier_constitution(name_or_path: str | Path) -> ClassifierConstitution:
    """Load the built-in classifier constitution by name, or any YAML file by path."""
    path = Path(name_or_path)
    if str(name_or_path) in BUILTINS:
        path = Path(str(_BUILTIN_DIR / BUILTINS[str(name_or_path)]))
    elif not path.exists():
        raise InputError(
            f"unknown classifier constitution '{name_or_path}'",
            hint=f"use a built-in name ({', '.join(builtin_names())}) or a path to a YAML file",
        )
    document = load_yaml(path)
    if not isinstance(document.data, dict):
        raise InputError("a classifier constitution must be a YAML mapping", path=path, line=1)
    _refuse_duplicate_ids(document)
    return document.validate(ClassifierConstitution)


def _refuse_duplicate_ids(document: YamlDocument) -> None:
    """A repeated category id, at the line of its second use (the schema alone could only blame the whole file)."""
    seen: dict[str, str] = {}
    for section in ("restricted", "permitted"):
        entries = document.data.get(section)
        for index, entry in enumerate(entries if isinstance(entries, list) else []):
            category_id = entry.get("id") if isinstance(entry, dict) else None
            if not isinstance(category_id, str):
                continue
            if category_id in seen or category_id == GENERAL:
                first = f"already used in {seen[category_id]}" if category_id in seen else f"'{GENERAL}' is reserved"
                raise InputError(
                    f"category id '{category_id}' {first}",
                    path=document.path,
                    line=document.line_of((section, index, "id")),
                    field=f"{section}.{index}.id",
                    hint="give every category its own id",
                )
            seen[category_id] = section
