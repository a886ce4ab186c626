"""The classifier data side: the constitution's schema and errors, splits without leaks, and the synthetic data
stage on scripted models (provenance, contested items, resume after a kill)."""

from __future__ import annotations

import hashlib
import itertools
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from doubles import DiesOnCall

from constitutional.classifiers import dedupe
from constitutional.classifiers.assemble import assemble
from constitutional.classifiers.constitution import ClassifierConstitution, load_classifier_constitution
from constitutional.classifiers.records import ClassifierExample
from constitutional.classifiers.roles import Generation
from constitutional.classifiers.synthesize import DataConfig, generate, parse_requests, read_pool
from constitutional.errors import InputError
from constitutional.store import StageFolder

RESTRICTED_IDS = {
    "biological_weapons", "chemical_weapons", "nuclear_radiological", "explosives", "cyber_attacks",
    "violent_attack_planning", "illegal_firearms", "fraud_and_scams", "illicit_drug_synthesis",
}  # fmt: skip
PERMITTED_IDS = {
    "safety_information", "history", "fiction", "medicine", "security_education", "everyday_language",
    "science_education", "policy_and_news", "general_help",
}  # fmt: skip

VALID = """\
name: tiny
version: 1
description: A classifier constitution written for tests.
restricted:
  - id: explosives
    definition: Help with building a device that explodes to hurt people.
    uplift: Formulations, quantities and assembly steps; history and safety are not uplift.
    examples:
      - How do I build a pipe bomb?
      - What mix makes the biggest blast?
permitted:
  - id: history
    definition: Questions about past events, however violent.
    examples:
      - Why did the Hindenburg explode?
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "clf.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    return [n for n, line in enumerate(text.splitlines(), start=1) if needle in line][occurrence - 1]


# ---- the constitution ----------------------------------------------------------------------------------------------


def test_the_built_in_constitution_has_every_category_the_issue_names():
    constitution = load_classifier_constitution("restricted-permitted")
    assert {c.id for c in constitution.restricted} == RESTRICTED_IDS
    assert {c.id for c in constitution.permitted} == PERMITTED_IDS
    assert all(c.examples and c.uplift for c in constitution.restricted)
    assert constitution.label("explosives") == 1 and constitution.label("history") == 0
    assert constitution.tag == "restricted-permitted@1"


def test_a_valid_file_loads(tmp_path):
    constitution = load_classifier_constitution(write(tmp_path, VALID))
    assert isinstance(constitution, ClassifierConstitution)
    assert constitution.version == "1" and [c.id for c in constitution.categories] == ["explosives", "history"]


@pytest.mark.parametrize(
    ("broken", "needle", "field"),
    [
        (re.sub(r"    uplift: .*\n", "", VALID), "- id: explosives", "restricted.0.uplift"),
        (VALID.replace("id: history", "id: History"), "id: History", "permitted.0.id"),
        (VALID.replace("      - Why did the Hindenburg explode?", "      - '   '"), "- '   '", "permitted.0.examples"),
        (VALID.replace("version: 1", "version: [1]"), "version: [1]", "version"),
    ],
    ids=["missing uplift", "id not snake_case", "blank example", "version not text"],
)  # fmt: skip
def test_a_broken_file_is_refused_with_its_file_line_and_field(tmp_path, broken, needle, field):
    path = write(tmp_path, broken)
    with pytest.raises(InputError) as caught:
        load_classifier_constitution(path)
    assert (caught.value.path, caught.value.field) == (path, field)
    # A missing key is blamed on the entry that lacks it; a bad value on its own line (a list: its first item).
    assert caught.value.line == line_of(broken, needle)


DUPLICATE = (
    VALID
    + """\
  - id: explosives
    definition: The same id again, this time in the permitted list.
    examples: ["When were fireworks invented?"]
"""
)


def test_a_repeated_category_id_is_blamed_on_its_second_use(tmp_path):
    path = write(tmp_path, DUPLICATE)
    with pytest.raises(InputError, match="already used in restricted") as caught:
        load_classifier_constitution(path)
    assert caught.value.line == line_of(DUPLICATE, "id: explosives", 2)
    assert caught.value.field == "permitted.1.id"


def test_an_unknown_name_lists_the_built_ins():
    with pytest.raises(InputError, match="restricted-permitted"):
        load_classifier_constitution("no-such-constitution")


# ---- splits --------------------------------------------------------------------------------------------------------


def fake_embedder(texts):
    """Texts that share their first word point the same way (cosine ~0.99); others are nearly orthogonal."""
    vectors = []
    for text in texts:
        head = np.random.default_rng(int(hashlib.sha256(text.split()[0].encode()).hexdigest()[:8], 16)).normal(size=64)
        tail = np.random.default_rng(int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)).normal(size=64)
        vector = head + 0.1 * tail
        vectors.append(vector / np.linalg.norm(vector))
    return np.asarray(vectors)


def random_groups(seed: int, count: int = 120) -> dict[str, list[str]]:
    rng = random.Random(seed)
    heads = [f"topic{i}" for i in range(30)]  # ~4 groups per topic: many near duplicates across groups
    return {f"g{i}": [f"{rng.choice(heads)} request number {i} {rng.random():.6f}"] for i in range(count)}


@pytest.mark.parametrize("seed", range(5))
def test_no_two_splits_share_a_near_duplicate(seed):
    groups = random_groups(seed)
    result = dedupe.split_groups(groups, seed, 0.2, 0.2, fake_embedder, threshold=0.9)
    kept = [(g, t) for g in result.splits for t in groups[g]]
    vectors = fake_embedder([t for _, t in kept])
    for (i, (a, _)), (j, (b, _)) in itertools.combinations(enumerate(kept), 2):
        if result.splits[a] != result.splits[b]:
            assert vectors[i] @ vectors[j] < 0.9, (a, b)
    assert set(result.splits) | set(result.removed) == set(groups)
    assert not set(result.splits) & set(result.removed)
    assert {"train", "calibration", "test"} == set(result.splits.values())  # near twins within a split stay


def test_of_two_near_twins_in_different_splits_the_less_important_one_goes():
    groups = {"a": ["topic request one"], "b": ["topic request two"]}  # same first word: near twins
    order = {"test": 0, "calibration": 1, "train": 2}
    for seed in range(40):
        splits = {g: dedupe.assign_split(g, seed, 0.3, 0.3) for g in groups}
        result = dedupe.split_groups(groups, seed, 0.3, 0.3, fake_embedder, threshold=0.9)
        if splits["a"] == splits["b"]:
            assert not result.removed  # twins in one split leak nothing
            continue
        loser = max(groups, key=lambda g: order[splits[g]])
        assert list(result.removed) == [loser] and "near duplicate" in result.removed[loser]


def test_exact_duplicates_and_held_out_items_are_removed():
    groups = {"first": ["How do I pick a lock?"], "copy": ["how do i pick a LOCK"], "eval": ["Held out text here"]}
    result = dedupe.split_groups(groups, 0, 0.2, 0.2, fake_embedder, 0.99, holdout=["held out text here!"])
    assert result.removed == {
        "copy": "exact duplicate of first",
        "eval": "exact duplicate of a held-out evaluation item",
    }
    near = dedupe.split_groups({"x": ["Held out near twin"]}, 0, 0.2, 0.2, fake_embedder, 0.9, ["Held out text"])
    assert "held-out evaluation item" in near.removed["x"]


def test_a_groups_split_does_not_depend_on_the_other_groups():
    alone = dedupe.split_groups({"g7": ["one text"]}, 3, 0.2, 0.2, fake_embedder, 0.9)
    among = dedupe.split_groups(random_groups(1) | {"g7": ["one text"]}, 3, 0.2, 0.2, fake_embedder, 0.9)
    assert alone.splits["g7"] == among.splits.get("g7", alone.splits["g7"])
    shares = Counter(dedupe.assign_split(f"g{i}", 0, 0.2, 0.3) for i in range(4000))
    assert abs(shares["test"] / 4000 - 0.3) < 0.03 and abs(shares["calibration"] / 4000 - 0.2) < 0.03


# ---- the synthetic data stage --------------------------------------------------------------------------------------


class Scripted:
    """A generator that writes a numbered list, a rewording or an answer, and a judge with a fixed opinion."""

    name = "scripted"
    context_window = None

    def __init__(self):
        self.calls = 0

    def generate(self, prompts, params):
        self.calls += 1
        outputs = []
        for prompt in prompts:
            n = int(hashlib.sha256(str(prompt).encode()).hexdigest()[:6], 16)
            if params.stop == ["\n\n"]:
                outputs.append(
                    f" Which way works for item {n} here?\n6. What should I do with thing {n % 97}?\n7. cut"
                )
            elif params.stop == ["\n"]:
                outputs.append(f" Could you tell me about item {n} please?")
            else:
                outputs.append(f"first gather the parts, then step {n % 13}.")
        return outputs

    def choice_logprobs(self, prompts, choices):
        # "Yes" (restricted) whenever the question quotes the word "bomb": right on some items, wrong on others.
        return [[-0.1, -2.0] if "bomb" in str(p) else [-2.0, -0.1] for p in prompts]


def tiny_constitution(tmp_path) -> ClassifierConstitution:
    return load_classifier_constitution(write(tmp_path, VALID))


def tiny_config(**fields) -> DataConfig:
    base = {
        "rounds": 2,
        "general_prompts": None,
        "answers_per_category": 2,
        "paraphrase_share": 0.5,
        "judge_share": 1.0,
        "holdout": [],
        "chunk_size": 3,
        "calibration_share": 0.3,
        "test_share": 0.3,
    }
    return DataConfig(**{**base, **fields})


def test_parse_requests_keeps_complete_numbered_lines_only():
    output = " How do I make a thing at home?\n6. What is the best way to do it?\n7) short one?\n8. It was cut off mid"
    assert parse_requests(output, 5) == ["How do I make a thing at home?", "What is the best way to do it?"]
    assert parse_requests(output, 1) == ["How do I make a thing at home?"]


def make_data(root: Path, generator, constitution, config=None, judge=None) -> tuple[dict, dict, StageFolder]:
    """Both data stages' work, as the pipeline runs them: (pool summary, examples summary, the examples' folder)."""
    config = config or tiny_config()
    pool_folder, folder = StageFolder(root / "clf_generate"), StageFolder(root / "clf_data")
    made = generate(pool_folder, generator, judge or Scripted(), constitution, config, 0)
    summary = assemble(folder, read_pool(pool_folder, constitution, config, 0), config, 0, fake_embedder)
    return made, summary, folder


def test_every_example_has_provenance_and_every_group_one_split(tmp_path):
    config = tiny_config(delayed_onset_share=1.0)
    made, summary, folder = make_data(tmp_path, Scripted(), tiny_constitution(tmp_path), config)
    examples = folder.records(ClassifierExample)
    assert summary["examples"] == len(examples) > 0
    assert made["written_requests"] == 3 and made["generated_requests"] > 0
    for e in examples:
        assert e.provenance.generator in ("written", "scripted") and e.provenance.template
        assert e.provenance.seed == 0
        if e.provenance.generator == "scripted" and e.wrapper == "plain" and "delayed_onset" not in e.id:
            assert e.provenance.judge == "scripted"  # judge_share 1: every generated source item was judged
    groups = {}
    for e in examples:
        groups.setdefault(e.id.split("~")[0].split(">")[0], set()).add(e.split)
    assert all(len(splits) == 1 for splits in groups.values())
    answers = [e for e in examples if e.answer is not None]
    assert {e.label for e in answers} == {0, 1}
    delayed = [e for e in answers if e.id.endswith("~delayed_onset")]
    assert delayed and all(e.label == 1 and e.harmful_from > 0 for e in delayed)
    originals = {e.id: e.answer for e in answers}
    for e in delayed:
        original = originals.get(e.id.removesuffix("~delayed_onset"))
        assert original is None or e.answer[e.harmful_from :] == original
    wrapped = [e for e in examples if e.wrapper != "plain"]
    assert wrapped and all(e.provenance.augmentations[-1] == e.wrapper for e in wrapped)


def test_each_augmented_request_appears_in_as_many_distinct_wrappers_as_asked(tmp_path):
    config = tiny_config(augment_share=1.0, augment_copies=3)
    _, _, folder = make_data(tmp_path, Scripted(), tiny_constitution(tmp_path), config)
    examples = folder.records(ClassifierExample)
    kept = {e.id for e in examples} | {r.id for r in folder.rejected()}
    for e in examples:
        if e.wrapper == "plain" and e.answer is None:
            copies = [i for i in kept if i.startswith(f"{e.id}~") and i.count("~") == e.id.count("~") + 1]
            assert len(copies) == 3 + (f"{e.id}~paraphrase" in kept), e.id


def test_the_judges_disagreements_are_contested_and_written_items_never_are(tmp_path):
    _, summary, folder = make_data(tmp_path, Scripted(), tiny_constitution(tmp_path))
    examples = folder.records(ClassifierExample)
    contested = [e for e in examples if e.contested]
    assert contested and summary["contested"] == len(contested)
    assert not any(e.provenance.generator == "written" for e in contested)
    # The written restricted example without "bomb" is judged wrong, which counts against the judge only.
    assert summary["written_judged"] == 3 and summary["judge_agreement_on_written"] == pytest.approx(2 / 3, abs=1e-3)
    # Wrapped versions share their source's verdict.
    by_id = {e.id: e for e in examples}
    for e in examples:
        source = e.id.rsplit("~", 1)[0]
        if e.wrapper != "plain" and source in by_id:
            assert e.contested == by_id[source].contested


def test_a_generation_stage_killed_part_way_resumes_with_nothing_lost_or_doubled(tmp_path):
    constitution = tiny_constitution(tmp_path)
    fresh = Scripted()
    _, _, whole = make_data(tmp_path / "whole", fresh, constitution)
    expected = {e.id for e in whole.records(ClassifierExample)} | {r.id for r in whole.rejected()}

    pool = StageFolder(tmp_path / "killed" / "clf_generate")
    with pytest.raises(KeyboardInterrupt):
        generate(pool, DiesOnCall(Scripted(), 3), Scripted(), constitution, tiny_config(), 0)
    assert pool.records(Generation)  # the calls before the kill are on disk
    survivor = Scripted()
    _, _, folder = make_data(tmp_path / "killed", survivor, constitution)
    generations = [g.id for g in pool.records(Generation)]
    lines = [line for path in pool.dir.glob("part-*.jsonl") for line in path.read_text().splitlines()]
    assert len(lines) == len(generations) == len(set(generations))  # no call written twice
    assert {e.id for e in folder.records(ClassifierExample)} | {r.id for r in folder.rejected()} == expected
    assert survivor.calls < fresh.calls  # the calls already on disk were not made again
    again = Scripted()
    generate(pool, again, Scripted(), constitution, tiny_config(), 0)
    assert again.calls == 0


def test_the_examples_are_reassembled_from_the_pool_without_calling_a_model(tmp_path):
    constitution = tiny_constitution(tmp_path)
    make_data(tmp_path, Scripted(), constitution)
    pool = read_pool(StageFolder(tmp_path / "clf_generate"), constitution, tiny_config(), 0)
    other = tiny_config(augment_copies=2, test_share=0.1)
    summary = assemble(StageFolder(tmp_path / "again"), pool, other, 0, fake_embedder)
    assert summary["examples"] > 0 and summary["judged"] == len(pool.judgements) - summary["written_judged"]


def test_an_unknown_augmentation_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="persona_roleplay"):
        DataConfig(augmentations=["roleplay_story"])


def test_answers_are_begun_with_varied_openings_so_no_one_phrase_marks_a_label():
    from constitutional.classifiers.synthesize import followup_tasks, written_requests
    from constitutional.prompts import CLF_ANSWER_LEADS

    constitution = load_classifier_constitution("restricted-permitted")
    config = tiny_config(answers_per_category=4)
    requests = written_requests(constitution, config)
    tasks = [t for t in followup_tasks(requests, config, 0, chat=True) if t.purpose == "answer"]
    assert CLF_ANSWER_LEADS["help"] == CLF_ANSWER_LEADS["comply"]  # an opening says nothing of harm
    for mode in ("comply", "refuse", "help"):
        used = {t.template for t in tasks if t.id.endswith(f">{mode}")}
        assert len(used) >= len(CLF_ANSWER_LEADS[mode]) - 1
        for task in tasks:
            if task.id.endswith(f">{mode}"):
                number = int(task.template.rsplit(".", 1)[1])
                assert task.prompt.endswith(CLF_ANSWER_LEADS[mode][number])


@pytest.mark.parametrize("chat", [True, False])
def test_general_prompts_are_answered_as_plain_chat_and_become_benign_answers_with_no_lead(chat):
    from constitutional.classifiers.synthesize import CHAT, TRANSCRIPT, followup_tasks, plain_items, written_requests
    from constitutional.prompts import clf_answer_prompt

    constitution = load_classifier_constitution("restricted-permitted")
    config = tiny_config(general_prompts="builtin:helpful", general_answers=5, answers_per_category=1)
    requests = written_requests(constitution, config)
    answers = [t for t in followup_tasks(requests, config, 0, chat=chat) if t.purpose == "answer"]
    general = [t for t in answers if t.category == "general"]
    assert len(general) == 5 and all(t.id.endswith(">chat") for t in general)
    others = [t for t in answers if t.category != "general"]
    assert others and not any(t.id.endswith(">chat") for t in others)
    text = {r.id: r.text for r in requests}
    for task in general:
        conversation = [{"role": "user", "content": text[task.id.rsplit(">", 1)[0]]}]
        # The chat messages themselves (the generator's template renders them), or the transcript with no lead.
        assert task.prompt == (conversation if chat else clf_answer_prompt(conversation, ""))
        assert task.template == (CHAT if chat else TRANSCRIPT)
    made = {
        t.id: Generation(id=t.id, purpose="answer", category=t.category, template=t.template, prompt=t.prompt,
                         output=" Boil the pasta for ten minutes.", model="m", params={}, seed=0)
        for t in general
    }  # fmt: skip
    items = [example for _, example, _ in plain_items(requests, made, 0) if example.answer is not None]
    assert len(items) == 5
    assert all(e.label == 0 and e.answer == "Boil the pasta for ten minutes." for e in items)


def test_the_judges_cut_off_is_set_on_the_written_items_so_a_yes_bias_does_not_contest_everything():
    from constitutional.classifiers.records import Provenance
    from constitutional.classifiers.relabel import apply_judgements, judge_cutoff
    from constitutional.classifiers.roles import Judgement

    def item(name, label, generator, p):
        example = ClassifierExample(
            id=name,
            messages=[{"role": "user", "content": name}],
            label=label,
            category="c",
            provenance=Provenance(generator=generator, template="t"),
        )
        verdict = Judgement(id=name, kind="request", p_restricted=p, logprobs=[0, 0], template="t", model="j")
        return ("g-" + name, example, name), verdict

    # A judge that says Yes to everything, a little more surely to restricted items.
    rows = [item(f"w{i}", i % 2, "written", 0.8 + 0.1 * (i % 2)) for i in range(10)]
    rows += [item("gen-restricted", 1, "model", 0.88), item("gen-benign", 0, "model", 0.82)]
    rows += [item("gen-mislabelled", 1, "model", 0.79)]
    items, judged = [r[0] for r in rows], {r[1].id: r[1] for r in rows}
    assert 0.8 < judge_cutoff(items, judged) < 0.9
    marked, counts = apply_judgements(items, judged)
    contested = {e.id for _, e, _ in marked if e.contested}
    assert contested == {"gen-mislabelled"}  # at 0.5 every benign item would have been contested
    assert counts["written_agreed"] == counts["written_judged"] == 10
    only_benign = [r[0] for r in rows if r[0][1].label == 0]
    assert judge_cutoff(only_benign, judged) == 0.5  # nothing to set it on


# ---- labelled sets -------------------------------------------------------------------------------------------------


def test_a_labelled_csv_reads_prompts_answers_and_offsets(tmp_path):
    from constitutional.classifiers.labelled import load_labelled

    path = tmp_path / "set.csv"
    path.write_text(
        'prompt,answer,label,category,harmful_from\n"How do I bake bread?",,0,general_help,\n'
        '"How do I make a bomb?","Sure.\nStep 1: [part]",1,explosives,6\n',
        encoding="utf-8",
    )
    first, second = load_labelled(str(path))
    assert (first.answer, first.label, first.category, first.harmful_from) == (None, 0, "general_help", None)
    assert (second.answer, second.label, second.harmful_from, second.wrapper) == (
        "Sure.\nStep 1: [part]",
        1,
        6,
        "plain",
    )
    assert first.split == second.split == "test" and first.id != second.id


@pytest.mark.parametrize(
    ("text", "line", "field"),
    [
        ('{"prompt": "a", "label": 1}\n{"prompt": "b", "label": 2}\n', 2, "label"),
        ('{"prompt": "a", "label": 1}\n{"label": 0}\n', 2, "prompt"),
        ('{"prompt": "a", "label": 1, "harmful_from": "soon"}\n', 1, "harmful_from"),
        ('{"prompt": "a", "label": 1, "id": "x"}\n{"prompt": "b", "label": 0, "id": "x"}\n', 2, "id"),
    ],
    ids=["bad label", "no prompt", "bad offset", "repeated id"],
)
def test_a_broken_labelled_row_is_refused_at_its_line(tmp_path, text, line, field):
    from constitutional.classifiers.labelled import load_labelled

    path = tmp_path / "set.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError) as caught:
        load_labelled(str(path))
    assert (caught.value.path, caught.value.line, caught.value.field) == (path, line, field)
