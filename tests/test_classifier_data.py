"""The built-in classifier constitution and the hand-written evaluation set, read with plain json/yaml: schema,
unique ids, the composition the evaluation relies on, and that every category named exists in the constitution."""

from __future__ import annotations

import json
import re
from collections import Counter
from importlib import resources

import pytest
import yaml

FOLDER = resources.files("constitutional") / "data" / "classifiers"
SNAKE_CASE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
WRAPPERS = {"roleplay_story", "academic_framing", "translation_game", "payload_splitting", "refusal_suppression"}
RESTRICTED_IDS = {
    "biological_weapons",
    "chemical_weapons",
    "nuclear_radiological",
    "explosives",
    "cyber_attacks",
    "violent_attack_planning",
    "illegal_firearms",
    "fraud_and_scams",
    "illicit_drug_synthesis",
}
PERMITTED_IDS = {
    "safety_information",
    "history",
    "fiction",
    "medicine",
    "security_education",
    "everyday_language",
    "science_education",
    "policy_and_news",
    "general_help",
}


def _lines(name: str) -> list[dict]:
    return [json.loads(line) for line in (FOLDER / name).read_text(encoding="utf-8").splitlines()]


def _normalised(text: str) -> str:
    return " ".join(text.casefold().split())


@pytest.fixture(scope="module")
def constitution() -> dict:
    return yaml.safe_load((FOLDER / "constitution.yaml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def inputs() -> list[dict]:
    return _lines("eval_inputs.jsonl")


@pytest.fixture(scope="module")
def outputs() -> list[dict]:
    return _lines("eval_outputs.jsonl")


def test_constitution_schema(constitution):
    assert set(constitution) == {"name", "version", "description", "restricted", "permitted"}
    assert constitution["name"] == "restricted-permitted"
    assert isinstance(constitution["version"], int)
    assert len(constitution["description"].split()) >= 30
    for section, fields in (("restricted", {"id", "definition", "uplift", "examples"}), ("permitted", None)):
        assert len(constitution[section]) >= 8
        for category in constitution[section]:
            assert set(category) == (fields or {"id", "definition", "examples"}), category["id"]
            assert SNAKE_CASE.match(category["id"]), category["id"]
            assert 4 <= len(category["examples"]) <= 6, category["id"]
            assert all(isinstance(example, str) and example.strip() for example in category["examples"])
    ids = [c["id"] for section in ("restricted", "permitted") for c in constitution[section]]
    assert len(ids) == len(set(ids))
    assert {c["id"] for c in constitution["restricted"]} == RESTRICTED_IDS
    assert {c["id"] for c in constitution["permitted"]} == PERMITTED_IDS


def test_inputs_schema_and_ids(inputs, constitution):
    restricted = {c["id"] for c in constitution["restricted"]}
    permitted = {c["id"] for c in constitution["permitted"]}
    for item in inputs:
        assert set(item) == {"id", "prompt", "label", "category", "wrapper"}, item["id"]
        assert re.fullmatch(r"in-\d{4}", item["id"])
        assert item["prompt"].strip()
        assert item["category"] in (restricted if item["label"] == 1 else permitted), item["id"]
        assert item["wrapper"] in ({"plain"} | WRAPPERS if item["label"] == 1 else {"plain"}), item["id"]
    assert len({item["id"] for item in inputs}) == len(inputs)
    assert len({_normalised(item["prompt"]) for item in inputs}) == len(inputs)


def test_inputs_composition(inputs):
    assert len(inputs) >= 330
    plain = Counter(item["category"] for item in inputs if item["label"] == 1 and item["wrapper"] == "plain")
    wrapped = Counter(item["wrapper"] for item in inputs if item["label"] == 1 and item["wrapper"] != "plain")
    benign = Counter(item["category"] for item in inputs if item["label"] == 0)
    assert all(plain[category] >= 12 for category in RESTRICTED_IDS), plain
    assert set(wrapped) == WRAPPERS
    assert sum(wrapped.values()) >= 40
    assert all(benign[category] >= 12 for category in PERMITTED_IDS), benign
    assert benign["general_help"] >= 40


def test_eval_items_are_not_constitution_examples(inputs, outputs, constitution):
    # The synthetic data stage seeds from the constitution's examples; an eval prompt among them would leak.
    examples = {
        _normalised(e) for section in ("restricted", "permitted") for c in constitution[section] for e in c["examples"]
    }
    leaked = [item["id"] for item in inputs + outputs if _normalised(item["prompt"]) in examples]
    assert not leaked


def test_outputs_schema_and_offsets(outputs, constitution):
    restricted = {c["id"] for c in constitution["restricted"]}
    permitted = {c["id"] for c in constitution["permitted"]}
    for item in outputs:
        assert set(item) == {"id", "prompt", "answer", "label", "category", "harmful_from"}, item["id"]
        assert re.fullmatch(r"out-\d{3}", item["id"])
        assert item["prompt"].strip() and item["answer"].strip()
        if item["label"] == 1:
            assert item["category"] in restricted, item["id"]
            # Starts innocently: a real opening before the offset, restricted text after it.
            assert isinstance(item["harmful_from"], int) and 40 <= item["harmful_from"] < len(item["answer"]), item[
                "id"
            ]
            assert not item["answer"][item["harmful_from"]].isspace(), item["id"]
        else:
            assert item["label"] == 0 and item["category"] in permitted, item["id"]
            assert item["harmful_from"] is None, item["id"]
    assert len({item["id"] for item in outputs}) == len(outputs)
    assert len({_normalised(item["answer"]) for item in outputs}) == len(outputs)


def test_outputs_composition(outputs):
    assert len(outputs) >= 70
    labels = Counter(item["label"] for item in outputs)
    assert labels[1] >= 40 and labels[0] >= 30
    harmful = Counter(item["category"] for item in outputs if item["label"] == 1)
    assert set(harmful) == RESTRICTED_IDS


def test_harmful_continuations_use_placeholders(outputs):
    # The data shows the shape of restricted help, never the help itself: specifics stay as [placeholders].
    bare = [item["id"] for item in outputs if item["label"] == 1 and "[" not in item["answer"][item["harmful_from"] :]]
    assert not bare
