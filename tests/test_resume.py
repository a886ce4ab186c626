"""What decides skip, resume or redo: a stage's fingerprint. Every recipe field that shapes a stage's output,
the models it uses, its constitution's text and its input files' content change it; settings that only change
how often work is saved do not. (A stage killed mid-way and rerun: tests/test_crash.py.)"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, get_args, get_origin

import pytest
from pydantic import BaseModel, ValidationError

from constitutional.recipe import Recipe
from constitutional.stages import STAGES, local_fingerprint
from constitutional.stages.definitions import SPEED_ONLY
from constitutional.store import config_hash

SECTION_STAGES = [stage for stage in STAGES.values() if stage.section is not None]


def _leaves(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Dotted paths of every leaf field of a settings model, nested settings flattened."""
    paths = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths += _leaves(annotation, (*prefix, name))
        else:
            paths.append((*prefix, name))
    return paths


def _candidates(value: Any, annotation: Any) -> list[Any]:
    """Other values a field could take, for any field type the recipes use."""
    if get_origin(annotation) is Literal:
        return [choice for choice in get_args(annotation) if choice != value]
    if get_origin(annotation) in (typing.Union, types.UnionType):
        options = [a for a in get_args(annotation) if a is not type(None)]
        found = [None] if value is not None else []
        for option in options:
            found += _candidates(value, option) if value is not None else _candidates(_example(option), option)
            found += [_example(option)] if value is None else []
        return found
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, max(value - 1, 0), 2]
    if isinstance(value, float):
        return [value * 0.5, value + 0.1, value - 0.1, 0.5]
    if isinstance(value, str):
        return [value + "-x"]
    if isinstance(value, list):
        return [[*value, value[0]] if value else ["x"], value[:-1]]
    if isinstance(value, dict):
        return [{**value, "extra": {"name": "x"}}]
    return []


def _example(annotation: Any) -> Any:
    return {int: 3, float: 0.5, str: "x", bool: True}.get(annotation)


def _get(data: dict, path: tuple[str, ...]) -> Any:
    for part in path:
        data = data[part]
    return data


def _with(data: dict, path: tuple[str, ...], value: Any) -> dict:
    if len(path) == 1:
        return {**data, path[0]: value}
    return {**data, path[0]: _with(data[path[0]], path[1:], value)}


def _config_hash(recipe: Recipe, stage) -> str:
    return config_hash(stage.config(recipe))


@pytest.mark.parametrize("stage", SECTION_STAGES, ids=lambda stage: stage.name)
def test_every_field_of_a_stages_section_that_shapes_its_output_changes_its_fingerprint(stage):
    base = Recipe()
    data = base.model_dump()
    section_model = type(getattr(base, stage.section))
    before = _config_hash(base, stage)
    tried = []
    for path in _leaves(section_model):
        full = (stage.section, *path)
        annotation = section_model
        for part in path:
            annotation = annotation.model_fields[part].annotation
        for value in _candidates(_get(data, full), annotation):
            try:
                changed = Recipe.model_validate(_with(data, full, value))
            except ValidationError:
                continue
            if _get(changed.model_dump(), full) == _get(data, full):
                continue
            tried.append(".".join(full))
            after = _config_hash(changed, stage)
            if path[0] in SPEED_ONLY:
                assert after == before, f"{'.'.join(full)} only changes how often work is saved"
            else:
                assert after != before, f"changing {'.'.join(full)} to {value!r} must redo {stage.name}"
            break
    # Every field was exercised (a field the mutation cannot change would hide here).
    assert len(tried) == len(_leaves(section_model)), sorted(set(map(".".join, _leaves(section_model))) - set(tried))


@pytest.mark.parametrize(
    ("stage", "role"),
    [("sl_generate", "policy"), ("rl_sample", "policy"), ("rl_label", "feedback"), ("evaluate", "judge")],
)
def test_the_model_a_stage_uses_is_in_its_fingerprint_and_its_speed_settings_are_not(stage, role):
    base = Recipe()
    renamed = base.model_copy(deep=True)
    getattr(renamed.models, role).name = "another-model"
    faster = base.model_copy(deep=True)
    getattr(faster.models, role).batch_size = 3
    assert _config_hash(renamed, STAGES[stage]) != _config_hash(base, STAGES[stage])
    assert _config_hash(faster, STAGES[stage]) == _config_hash(base, STAGES[stage])


def test_a_model_a_stage_does_not_use_leaves_its_fingerprint_alone():
    base = Recipe()
    other = base.model_copy(deep=True)
    other.models.judge.name = "another-judge"
    assert _config_hash(other, STAGES["sl_generate"]) == _config_hash(base, STAGES["sl_generate"])
    assert _config_hash(other, STAGES["rl_label"]) == _config_hash(base, STAGES["rl_label"])


def test_the_seed_is_in_every_fingerprint_of_a_stage_that_draws():
    base, reseeded = Recipe(), Recipe(seed=1)
    for name in ("sl_generate", "sl_train", "rl_sample", "rl_label", "pm_train", "rl_train", "evaluate"):
        assert _config_hash(reseeded, STAGES[name]) != _config_hash(base, STAGES[name]), name


def test_an_edited_constitution_with_the_same_name_and_version_changes_the_fingerprint(tmp_path):
    from constitutional.constitution import _BUILTIN_DIR

    text = (_BUILTIN_DIR / "harmless.yaml").read_text(encoding="utf-8")
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    before = Recipe(constitution=str(path))
    hashes = {name: _config_hash(before, STAGES[name]) for name in ("sl_generate", "rl_label", "evaluate")}
    path.write_text(text.replace("harmful", "hurtful", 1), encoding="utf-8")
    for name, old in hashes.items():
        assert _config_hash(before, STAGES[name]) != old, name


def test_input_files_count_by_content_not_by_name(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("How do I bake bread?\n", encoding="utf-8")
    recipe = Recipe.model_validate({"sl": {"red_team_prompts": str(path), "helpful_prompts": None}})
    stage = STAGES["sl_generate"]
    first = local_fingerprint(recipe, stage)
    assert local_fingerprint(recipe, stage) == first  # unchanged: the stage is skipped
    path.write_text("How do I bake rye bread?\n", encoding="utf-8")
    assert local_fingerprint(recipe, stage)["inputs"] != first["inputs"]  # edited: it is redone
    assert local_fingerprint(recipe, stage)["config"] == first["config"]
