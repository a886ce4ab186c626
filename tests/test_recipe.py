"""Recipes: every shipped recipe parses; flags override recipe values; unknown keys and flags are refused."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from constitutional.errors import InputError
from constitutional.recipe import Recipe, describe_fields, load_recipe, parse_overrides
from constitutional.sl import SLConfig

# collective.yaml is a comparison spec, not a pipeline recipe: tests/test_compare.py checks it.
RECIPES = sorted(
    path for path in (Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml") if path.name != "collective.yaml"
)


def test_repository_has_recipes():
    assert any(path.name == "demo.yaml" for path in RECIPES)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_parses(path):
    from constitutional.constitution import load_constitution

    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    # What a recipe names must exist too, or it would fail only when its stage starts.
    load_constitution(recipe.constitution)
    for source in (recipe.sl.red_team_prompts, recipe.sl.helpful_prompts):
        if source is not None and not source.startswith("builtin:"):
            assert (path.parents[1] / source).exists(), source


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_input_every_stage_of_a_recipe_reads_exists(path, monkeypatch):
    """Each stage's fingerprint hashes its input files and constitution, so computing it finds a missing one."""
    from constitutional.stages import STAGES, local_fingerprint

    monkeypatch.chdir(path.parents[1])  # recipes name files relative to the repository
    recipe = load_recipe(path)
    for stage in STAGES.values():
        fingerprint = local_fingerprint(recipe, stage)
        named = [source for source in stage.inputs(recipe) if source is not None]
        assert sorted(fingerprint["inputs"]) == sorted(named), stage.name


def test_the_packaged_demo_recipe_is_the_repositorys():
    from constitutional.recipe import DEMO_RECIPE

    repository = Path(__file__).resolve().parents[1] / "recipes" / "demo.yaml"
    assert DEMO_RECIPE.is_file() and DEMO_RECIPE.read_bytes() == repository.read_bytes()
    assert load_recipe(DEMO_RECIPE) == load_recipe(repository)


def test_demo_recipe_values():
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "demo.yaml")
    assert recipe.run_dir == "runs/demo"
    assert recipe.sl.num_revisions == 2
    assert recipe.models.policy.name == "smollm2-135m-instruct"
    assert recipe.models.feedback.name == "gemma3-270m"


def test_defaults_without_a_file():
    recipe = load_recipe(None)
    assert recipe == Recipe()


def test_section_override_lands_in_section():
    overrides = parse_overrides(["--num-revisions", "3"], "sl")
    assert overrides == {"sl": {"num_revisions": 3}}
    assert load_recipe(None, overrides).sl.num_revisions == 3


def test_override_wins_over_recipe_and_keeps_siblings():
    demo = RECIPES[0].parent / "demo.yaml"
    recipe = load_recipe(demo, parse_overrides(["--num-revisions", "3", "--sampling.temperature", "0"], "sl"))
    assert recipe.sl.num_revisions == 3
    assert recipe.sl.sampling.temperature == 0.0
    # Values the override did not touch still come from the recipe, not the defaults.
    written = yaml.safe_load(demo.read_text())["sl"]
    assert written["max_prompts"] != SLConfig().max_prompts
    assert recipe.sl.max_prompts == written["max_prompts"]
    assert recipe.sl.sampling.max_new_tokens == written["sampling"]["max_new_tokens"]


def test_top_level_fields_from_a_section_command():
    overrides = parse_overrides(["--run-dir", "runs/x", "--seed", "7"], "sl")
    recipe = load_recipe(None, overrides)
    assert recipe.run_dir == "runs/x"
    assert recipe.seed == 7


def test_dotted_override():
    overrides = parse_overrides(["--models.policy.name", "x", "--models.policy.batch-size", "4"], "sl")
    assert overrides == {"models": {"policy": {"name": "x", "batch_size": 4}}}
    recipe = load_recipe(None, overrides)
    assert recipe.models.policy.name == "x"
    assert recipe.models.policy.batch_size == 4
    assert recipe.models.feedback.name == "gemma3-270m"


def test_value_parsing():
    overrides = parse_overrides(
        [
            "--max-prompts",
            "null",
            "--critique",
            "false",
            "--num-principles",
            "5",
            "--sampling.top-p",
            "0.5",
            "--helpful-prompts",
            "null",
        ],
        "sl",
    )
    assert overrides["sl"] == {
        "max_prompts": None,
        "critique": False,
        "num_principles": 5,
        "sampling": {"top_p": 0.5},
        "helpful_prompts": None,
    }
    recipe = load_recipe(None, overrides)
    assert recipe.sl.max_prompts is None
    assert recipe.sl.critique is False
    assert recipe.sl.num_principles == 5
    assert recipe.sl.sampling.top_p == 0.5
    assert recipe.sl.helpful_prompts is None
    assert load_recipe(
        None, parse_overrides(["--models.policy.trust-remote-code", "true"], None)
    ).models.policy.trust_remote_code


def test_unknown_flag_rejected():
    with pytest.raises(InputError, match="unknown option '--num-revision'"):
        parse_overrides(["--num-revision", "3"], "sl")
    # A field of another section is not reachable by its bare name.
    with pytest.raises(InputError, match="unknown option"):
        parse_overrides(["--lora-r", "8"], "sl")
    with pytest.raises(InputError, match="unknown option"):
        parse_overrides(["--sl.bogus", "1"], None)


@pytest.mark.parametrize("args", [["--num-revisions"], ["3"], ["num-revisions", "3"]])
def test_malformed_flags_rejected(args):
    with pytest.raises(InputError, match="expected '--field value'"):
        parse_overrides(args, "sl")


def test_invalid_override_value_names_field():
    with pytest.raises(InputError) as info:
        load_recipe(None, parse_overrides(["--num-revisions", "0"], "sl"))
    assert info.value.field == "sl.num_revisions"


def test_unknown_yaml_key_names_file_and_line(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("run_dir: runs/x\nsl:\n  num_revisions: 2\n  num_revisons: 3\n", encoding="utf-8")
    with pytest.raises(InputError) as info:
        load_recipe(path)
    assert info.value.field == "sl.num_revisons"
    assert info.value.line == 4
    assert f"{path}:4" in str(info.value)


def test_invalid_yaml_value_names_file_and_line(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("seed: 0\nmodels:\n  policy:\n    name: x\n    batch_size: many\n", encoding="utf-8")
    with pytest.raises(InputError) as info:
        load_recipe(path)
    assert info.value.field == "models.policy.batch_size"
    assert f"{path}:5" in str(info.value)


def test_recipe_must_be_a_mapping(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("- a\n", encoding="utf-8")
    with pytest.raises(InputError, match="mapping"):
        load_recipe(path)


def test_describe_fields_flattens_sections():
    flags = {flag for flag, _, _ in describe_fields(Recipe)}
    assert "--sl.num-revisions" in flags
    assert "--sl.sampling.temperature" in flags
    assert "--models.policy.name" in flags
    assert "--sl" not in flags


@pytest.mark.parametrize("value", ["2024-01-01", "no", "1"])
def test_string_field_override_keeps_text(value):
    recipe = load_recipe(None, parse_overrides(["--run-dir", value, "--models.policy.name", value], "sl"))
    assert recipe.run_dir == value
    assert recipe.models.policy.name == value


def test_a_bad_flag_value_is_blamed_on_the_flag_even_with_a_recipe_file(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("sample:\n  max_prompts: 4\n", encoding="utf-8")
    with pytest.raises(InputError) as info:
        load_recipe(path, parse_overrides(["--max-prompts", "two"], "sample"))
    assert info.value.path is None and info.value.line is None
    assert info.value.field == "sample.max_prompts"
    assert "--max-prompts 'two'" in str(info.value)


def test_a_bad_recipe_value_is_still_blamed_on_its_line_when_flags_set_other_fields(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("seed: 0\nsample:\n  max_prompts: many\n", encoding="utf-8")
    with pytest.raises(InputError) as info:
        load_recipe(path, parse_overrides(["--chunk-size", "4"], "sample"))
    assert (info.value.path, info.value.line, info.value.field) == (path, 3, "sample.max_prompts")


def test_a_flag_value_that_is_not_yaml_names_the_flag():
    with pytest.raises(InputError, match=re.escape("--sampling.stop '[oops'")):
        parse_overrides(["--sampling.stop", "[oops"], "sl")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"seed: \xff\n", "not UTF-8"),
        (b"seed: 1\n\x00", "character #x0000 is not allowed"),
        (b"seed: 2024-13-45\n", "month must be in 1..12"),
        (b"seed: " + b"1" * 5000 + b"\n", "Exceeds the limit"),
        (b"[" * 5000, "nested too deeply"),
        (b'run_dir: "\\ud800"\n', "unpaired surrogate"),
    ],
    ids=["binary", "nul", "impossible-date", "huge-int", "deep", "surrogate"],
)
def test_a_recipe_file_python_cannot_hold_is_an_input_error(tmp_path, content, message):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(content)
    with pytest.raises(InputError, match=re.escape(message)) as info:
        load_recipe(path)
    assert info.value.path == path


def test_a_recipe_path_that_is_a_folder(tmp_path):
    with pytest.raises(InputError, match="is a folder, not a file"):
        load_recipe(tmp_path)
