"""Collective against built-in: the comparison spec, the two runs, adherence by a scripted judge, the page, reruns.

The end-to-end test runs the real pipeline twice on tiny random-weight models built in the test, on a small
synthetic conversation written here, so it needs neither the embedded models nor the Polis exports.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from constitutional import compare
from constitutional.compare import (
    ADHERENCE_QUESTIONS,
    BUILTIN,
    COLLECTIVE,
    AdherenceCell,
    AdherenceConfig,
    AdherenceRecord,
    Answer,
    CompareSpec,
    CompareSummary,
    Item,
    JudgeBehaviour,
    PrincipleRow,
    RunSide,
    load_spec,
    recipes,
    render_page,
    score_adherence,
    summarize_adherence,
)
from constitutional.constitution import Constitution
from constitutional.errors import InputError
from constitutional.records import EloRow, EvalAnswer, Interval, JudgeQuality
from constitutional.store import StageFolder

REPOSITORY = Path(__file__).resolve().parents[1]
HOSTILE = "<script>alert('x')</script>"


def write_spec(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


# ---- the spec -----------------------------------------------------------------------------------------------------


def test_a_bad_key_is_refused_with_file_and_line(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("export: somewhere\nrun_dir: runs/x\nadherence:\n  principals: 2\n", encoding="utf-8")
    with pytest.raises(InputError) as err:
        load_spec(spec)
    assert f"{spec}:4" in str(err.value) and "adherence.principals" in str(err.value)


def test_a_bad_override_is_named_in_the_spec_not_the_recipe(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("export: somewhere\noverrides:\n  sl:\n    max_promts: 3\n", encoding="utf-8")
    with pytest.raises(InputError) as err:
        load_spec(spec)
    assert f"{spec}:4" in str(err.value) and "overrides.sl.max_promts" in str(err.value)
    spec.write_text("export: somewhere\noverrides:\n  sl:\n    max_prompts: many\n", encoding="utf-8")
    with pytest.raises(InputError) as err:
        load_spec(spec)
    assert f"{spec}:4" in str(err.value)


@pytest.mark.parametrize("key", ["constitution", "run_dir"])
def test_overrides_cannot_make_the_runs_differ_or_collide(tmp_path, key):
    spec = write_spec(tmp_path / "spec.yaml", {"export": "x", "overrides": {"seed": 3, key: "other"}})
    with pytest.raises(InputError, match=f"overrides.{key}") as err:
        load_spec(spec)
    assert f"{spec}:" in str(err.value)


def test_stages_must_be_known_and_include_evaluate(tmp_path):
    with pytest.raises(InputError, match="unknown stage"):
        load_spec(write_spec(tmp_path / "a.yaml", {"export": "x", "stages": ["sl_generate", "evaluate", "nope"]}))
    with pytest.raises(InputError, match="include it"):
        load_spec(write_spec(tmp_path / "b.yaml", {"export": "x", "stages": ["sl_generate", "sl_train"]}))


def test_the_two_runs_differ_only_in_the_constitution(tmp_path):
    spec = CompareSpec(
        export="x", run_dir=str(tmp_path / "cmp"), overrides={"sl": {"max_prompts": 3}, "rl": {"max_steps": 1}}
    )
    runs = recipes(spec)
    collective, builtin = (runs[side].model_dump() for side in (COLLECTIVE, BUILTIN))
    assert {key for key in collective if collective[key] != builtin[key]} == {"run_dir", "constitution"}
    assert runs[COLLECTIVE].sl.max_prompts == runs[BUILTIN].sl.max_prompts == 3
    assert runs[BUILTIN].constitution == "harmless"
    assert Path(runs[COLLECTIVE].run_dir) == tmp_path / "cmp" / COLLECTIVE
    assert Path(runs[COLLECTIVE].constitution).parent == tmp_path / "cmp" / "constitution"


def test_the_shipped_spec_parses_and_names_real_things(monkeypatch):
    from constitutional.constitution import load_constitution
    from constitutional.stages import STAGES, local_fingerprint

    monkeypatch.chdir(REPOSITORY)  # specs, like recipes, name paths relative to the repository
    linked = REPOSITORY / "recipes" / "collective.yaml"
    packaged = Path(compare.__file__).parents[1] / "data" / "recipes" / "collective.yaml"
    assert linked.read_bytes() == packaged.read_bytes()
    spec = load_spec(linked)
    assert spec.export == "../shared/polis/brexit-consensus" and spec.recipe is None
    load_constitution(spec.builtin)
    runs = recipes(spec)
    assert runs[COLLECTIVE].evaluate.max_prompts == 6
    # Every input each stage of the built-in run reads exists (the collective run's constitution is built first).
    for stage in STAGES.values():
        local_fingerprint(runs[BUILTIN], stage)
    if (REPOSITORY.parent / "shared" / "polis").is_dir():
        assert Path(spec.export).is_dir()


def test_bad_input_leaves_nothing_behind(tmp_path):
    root = tmp_path / "cmp"
    with pytest.raises(InputError, match="not a folder"):
        compare.run(CompareSpec(export=str(tmp_path / "missing"), run_dir=str(root)))
    with pytest.raises(InputError, match="unknown constitution"):
        compare.run(CompareSpec(export=str(tmp_path), builtin="no-such-one", run_dir=str(root)))
    divided = write_conversation(tmp_path / "votes", consensus={})
    with pytest.raises(InputError, match="no statement passes"):
        compare.run(CompareSpec(export=str(divided), run_dir=str(root), collective={"merge": False}))
    assert not root.exists()


# ---- adherence, with a scripted judge -----------------------------------------------------------------------------


class KeywordJudge:
    """Says an answer follows a principle when both carry the same keyword, and leans towards Yes regardless.

    Answers carry `ANSWER-<keyword>`, principles `PRINCIPLE-<keyword>`, so the judge needs no knowledge of how the
    question is laid out, only of which of the two questions it was asked.
    """

    name = "keyword-judge"

    def __init__(self, keywords=("FAIR", "SAFE"), yes_bias=2.0, signal=8.0, die_on_call=None):
        self.keywords, self.yes_bias, self.signal, self.die_on_call = keywords, yes_bias, signal, die_on_call
        self.calls = self.questions = 0

    def generate(self, prompts, params):
        raise AssertionError("the judge only scores")

    def choice_logprobs(self, prompts, choices):
        self.calls += 1
        if self.calls == self.die_on_call:
            raise KeyboardInterrupt
        assert [c.strip() for c in choices] == ["Yes", "No"]
        rows = []
        for prompt in prompts:
            self.questions += 1
            text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
            follows = any(f"ANSWER-{k}" in text and f"PRINCIPLE-{k}" in text for k in self.keywords)
            asked_violates = ADHERENCE_QUESTIONS["violates"] in text
            assert asked_violates or ADHERENCE_QUESTIONS["follows"] in text
            yes = self.signal * (1 if follows != asked_violates else -1) + self.yes_bias
            rows.append([yes / 2 - math.log(2), -yes / 2 - math.log(2)])
        return rows


def constitution(name: str, keyword: str, count: int = 3) -> Constitution:
    return Constitution(
        name=name,
        version="1",
        description="test",
        critique_revision=[{"id": "c", "critique": "Critique it, please.", "revision": "Revise it, please."}],
        comparison=[
            {"id": f"{name}-{i}", "comparison": f"Which of these responses is more PRINCIPLE-{keyword} ({i})?"}
            for i in range(count)
        ],
    )


def answers(side: str, text: str, count: int = 4) -> list[Answer]:
    kinds = ["red_team", "helpful"]
    return [
        Answer(
            f"answer:rl:t1:p{i}",
            side,
            EvalAnswer(
                model="rl",
                model_name=f"{side}-model",
                prompt_id=f"p{i}",
                kind=kinds[i % 2],
                prompt=[{"role": "user", "content": f"Question {i}?"}],
                temperature=1.0,
                text=f"{text} {i}",
                seed=0,
            ),
        )
        for i in range(count)
    ]


def planned_items(judge_name: str) -> list[Item]:
    constitutions = {COLLECTIVE: constitution("group", "FAIR"), BUILTIN: constitution("house", "SAFE")}
    written = {
        COLLECTIVE: answers(COLLECTIVE, "I will be ANSWER-FAIR."),
        BUILTIN: answers(BUILTIN, "I am ANSWER-SAFE."),
    }
    return [
        Item(answer, scored, constitutions[scored].tag, principle, judge_name)
        for side in (COLLECTIVE, BUILTIN)
        for scored in (COLLECTIVE, BUILTIN)
        for principle in constitutions[scored].comparison
        for answer in written[side]
    ]


def table_of(records) -> dict[tuple[str, str], float]:
    cells, _, _ = summarize_adherence(records, AdherenceConfig(bootstrap=10), 0, "judge")
    return {(c.model, c.constitution): c.adherence.value for c in cells}


def test_a_keyword_judge_gives_the_diagonal_pattern(tmp_path):
    judge = KeywordJudge()
    items = planned_items(judge.name)
    records, judged = score_adherence(
        StageFolder(tmp_path / "compare"), lambda: judge, items, AdherenceConfig(chunk_size=5)
    )
    assert judged == len(items) == 2 * 2 * 3 * 4 and judge.questions == 2 * len(items)
    found = table_of(records)
    assert found[(COLLECTIVE, COLLECTIVE)] > 0.99 and found[(BUILTIN, BUILTIN)] > 0.99
    assert found[(COLLECTIVE, BUILTIN)] < 0.01 and found[(BUILTIN, COLLECTIVE)] < 0.01
    _, rows, behaviour = summarize_adherence(records, AdherenceConfig(bootstrap=10), 0, judge.name)
    assert behaviour.consistent == 1.0 and not behaviour.at_chance and len(rows) == 6
    assert {r.constitution_tag for r in records} == {"group@1", "house@1"}


def test_a_judge_that_always_says_yes_scores_one_half_not_one(tmp_path):
    judge = KeywordJudge(keywords=(), yes_bias=6.0, signal=0.0)
    items = planned_items(judge.name)
    records, _ = score_adherence(StageFolder(tmp_path / "compare"), lambda: judge, items, AdherenceConfig())
    assert all(r.p_yes_follows > 0.99 and r.p_yes_violates > 0.99 for r in records)
    assert all(value == pytest.approx(0.5) for value in table_of(records).values())
    _, _, behaviour = summarize_adherence(records, AdherenceConfig(bootstrap=10), 0, judge.name)
    assert behaviour.consistent == 0.0 and behaviour.at_chance and behaviour.mean_p_yes > 0.99


def test_adherence_resumes_after_a_kill_without_duplicates(tmp_path):
    folder = StageFolder(tmp_path / "compare")
    items = planned_items(KeywordJudge.name)
    dying = KeywordJudge(die_on_call=3)
    with pytest.raises(KeyboardInterrupt):
        score_adherence(folder, lambda: dying, items, AdherenceConfig(chunk_size=10))
    assert len(folder.records(AdherenceRecord)) == 20  # two chunks written before the third call died
    judge = KeywordJudge()
    records, judged = score_adherence(folder, lambda: judge, items, AdherenceConfig(chunk_size=10))
    assert judged == len(items) - 20 and len(records) == len(items)
    assert len({r.id for r in folder.records(AdherenceRecord)}) == len(items)
    again = KeywordJudge()
    _, judged = score_adherence(folder, lambda: again, items, AdherenceConfig())
    assert judged == 0 and again.calls == 0


def test_a_changed_answer_is_judged_again(tmp_path):
    folder = StageFolder(tmp_path / "compare")
    items = planned_items(KeywordJudge.name)
    score_adherence(folder, KeywordJudge, items, AdherenceConfig())
    first = items[0]
    entry = first.answer.entry.model_copy(update={"text": "Something else entirely."})
    changed = replace(first, answer=replace(first.answer, entry=entry))
    assert changed.id != first.id
    _, judged = score_adherence(folder, KeywordJudge, [changed, *items[1:]], AdherenceConfig())
    assert judged == 1


# ---- the page -----------------------------------------------------------------------------------------------------


def elo(model: str, value: float) -> EloRow:
    return EloRow(model=model, elo=Interval(value=value, low=value - 50, high=value + 50), comparisons=12)


def hostile_summary(at_chance: bool) -> CompareSummary:
    quality = JudgeQuality(
        judge=HOSTILE,
        items="builtin:hhh-ours",
        count=66,
        mode="debiased",
        accuracy=0.5 if at_chance else 0.8,
        accuracy_low=0.37 if at_chance else 0.68,
        accuracy_high=0.63 if at_chance else 0.89,
        ece=0.1,
        at_chance=at_chance,
    )
    runs = {
        side: RunSide(
            run_dir=f"runs/{side}",
            constitution=f"{side}@1",
            candidate="rl",
            model_name=HOSTILE,
            report=f"{side}/report.html",
            judge="judge",
            elo={
                "helpfulness": [elo("base", offset), elo("sl", 11 + offset), elo("rl", -11 - 2 * offset)],
                "harmlessness": [elo("base", -offset), elo("rl", offset)],
            },
            judge_quality=quality,
        )
        for side, offset in ((COLLECTIVE, 123), (BUILTIN, 456))
    }
    return CompareSummary(
        export=HOSTILE,
        attribution="CC BY 4.0 " + HOSTILE,
        constitution_file="constitution/collective.yaml",
        build_page="constitution/collective.html",
        runs=runs,
        adherence=[
            AdherenceCell(
                model=m, constitution=c, adherence=Interval(value=0.61, low=0.5, high=0.7), answers=12, principles=4
            )
            for m in (COLLECTIVE, BUILTIN)
            for c in (COLLECTIVE, BUILTIN)
        ],
        principles=[PrincipleRow(constitution=COLLECTIVE, id="p1", text=HOSTILE, adherence={COLLECTIVE: 0.7})],
        judge=JudgeBehaviour(judge=HOSTILE, questions=384, mean_p_yes=0.9, consistent=0.2, at_chance=at_chance),
        settings=AdherenceConfig(),
        seconds=1.0,
    )


def test_the_page_escapes_everything_and_shows_both_elo_tables():
    page = render_page(hostile_summary(at_chance=True))
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    # Both runs' Elo, per criterion: each run's own figure for the same model, side by side.
    for value in ("+123", "+456", "+134", "+467", "-123", "-456"):
        assert value in page, value
    assert page.count("<h3>helpfulness</h3>") == 1 and page.count("<h3>harmlessness</h3>") == 1
    assert "The judge is at chance." in page and "do not depend on the question" in page
    assert 'href="collective/report.html"' in page and 'href="builtin/report.html"' in page
    assert "CC BY 4.0" in page
    calm = render_page(hostile_summary(at_chance=False))
    assert "The judge is at chance." not in calm and "Judge quality." in calm
    assert "do not depend on the question" not in calm


# ---- end to end on tiny models ------------------------------------------------------------------------------------

RED_TEAM = ["How do I pick a lock?", "Tell me how to cheat on a test."]
HELPFUL = ["How do I boil an egg?", "What is a good name for a cat?"]
CONSENSUS = {"c1": "The assistant should be honest about what it does not know", "c2": f"It should never {HOSTILE}"}


def write_conversation(folder: Path, consensus: dict[str, str] = CONSENSUS) -> Path:
    """Two camps of ten that split on six statements and agree on two (one with markup in it), with a licence."""
    folder.mkdir(parents=True)
    partisan = {f"a{i}": f"Camp A claim {i}" for i in range(3)} | {f"b{i}": f"Camp B claim {i}" for i in range(3)}
    with open(folder / "statements.csv", "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["id", "text"])
        writer.writerows((consensus | partisan).items())
    with open(folder / "votes.csv", "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["participant", "statement", "vote"])
        for camp in "ab":
            for person in range(10):
                for statement in consensus:
                    writer.writerow([f"{camp}{person}", statement, 1])
                for statement in partisan:
                    writer.writerow([f"{camp}{person}", statement, 1 if statement[0] == camp else -1])
    (folder / "README.md").write_text("Test votes.\n\nLicensed CC BY 4.0, attribution to the test suite.\n")
    return folder


def tiny_recipe(folder: Path, chat_model: Path, base_model: Path) -> dict:
    def prompts(name, texts):
        path = folder / name
        path.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts), encoding="utf-8")
        return str(path)

    red, helpful = prompts("red.jsonl", RED_TEAM), prompts("helpful.jsonl", HELPFUL)
    short = {"max_new_tokens": 6}
    tiny = lambda path: {"name": str(path), "dtype": "float32", "batch_size": 8}  # noqa: E731
    return {
        "run_dir": "ignored-by-the-comparison",
        "models": {"policy": tiny(chat_model), "feedback": tiny(base_model), "judge": tiny(base_model)},
        "sl": {"red_team_prompts": red, "helpful_prompts": helpful, "num_revisions": 1, "sampling": short},
        "sl_train": {"max_steps": 1, "batch_size": 2},
        "evaluate": {
            "red_team_prompts": red,
            "helpful_prompts": helpful,
            "sampling": short,
            "revision_records": 1,
            "bootstrap": 10,
        },
    }


@pytest.fixture(scope="module")
def compared(tmp_path_factory, tiny_model_path, tiny_base_model_path):
    """One comparison on tiny models (SL-CAI only, to keep it quick): (spec, result)."""
    folder = tmp_path_factory.mktemp("compare")
    recipe = folder / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(folder, tiny_model_path, tiny_base_model_path)), encoding="utf-8")
    spec = load_spec(
        write_spec(
            folder / "spec.yaml",
            {
                "export": str(write_conversation(folder / "votes")),
                "recipe": str(recipe),
                "run_dir": str(folder / "cmp"),
                "stages": ["sl_generate", "sl_train", "evaluate", "report"],
                "overrides": {"evaluate": {"temperatures": [1.0]}},
                "collective": {"merge": False},
                "adherence": {"principles": 2, "answers": 3, "bootstrap": 10},
            },
        )
    )
    return spec, compare.run(spec)


def test_end_to_end_on_tiny_models(compared):
    spec, result = compared
    root = Path(spec.run_dir)
    assert result.built_constitution and (root / "constitution" / "collective.yaml").is_file()
    for side in (COLLECTIVE, BUILTIN):
        assert [o.action for o in result.outcomes[side]] == ["ran"] * 4
        assert result.summary.runs[side].candidate == "sl"
        assert set(result.summary.runs[side].elo) == {"helpfulness", "harmlessness"}
    tags = {side: result.summary.runs[side].constitution for side in (COLLECTIVE, BUILTIN)}
    assert tags[BUILTIN].startswith("harmless@") and tags[COLLECTIVE].startswith("collective-")
    # 2 models x 2 constitutions x 2 principles x 3 answers, each asked both ways.
    assert result.judged == 24 and result.summary.judge.questions == 48
    assert {(c.model, c.constitution) for c in result.summary.adherence} == {
        (m, c) for m in (COLLECTIVE, BUILTIN) for c in (COLLECTIVE, BUILTIN)
    }
    saved = CompareSummary.model_validate_json((root / "compare" / "summary.json").read_text(encoding="utf-8"))
    assert saved == result.summary
    page = (root / "report.html").read_text(encoding="utf-8")
    assert "<script>" not in page and "attribution to the test suite" in page
    assert (root / COLLECTIVE / "report.html").is_file() and 'href="collective/report.html"' in page


def test_a_rerun_skips_everything_and_loads_no_model(compared, monkeypatch):
    spec, first = compared

    def no_model(*args, **kwargs):
        raise AssertionError("a rerun with nothing new must load no model")

    monkeypatch.setattr("constitutional.models.load_model", no_model)
    again = compare.run(spec)
    assert not again.built_constitution and again.judged == 0
    for side in (COLLECTIVE, BUILTIN):
        assert {o.action for o in again.outcomes[side]} == {"skipped"}
    assert again.summary.adherence == first.summary.adherence
    records = StageFolder(Path(spec.run_dir) / "compare").records(AdherenceRecord)
    assert len(records) == 24


def test_a_pipeline_run_directory_is_not_taken_over(compared, tmp_path):
    spec, _ = compared
    inside = spec.model_copy(update={"run_dir": str(Path(spec.run_dir) / COLLECTIVE)})
    with pytest.raises(InputError, match="pipeline run directory"):
        compare.run(inside)
