"""AI feedback: a scripted feedback model whose preferences the test sets, so every label has a known answer."""

from __future__ import annotations

import math

import pytest

from constitutional.constitution import load_constitution
from constitutional.feedback import (
    PAIRS_STAGE,
    STAGE,
    FeedbackConfig,
    label,
    label_pairs,
    label_stats,
)
from constitutional.prompts import ANSWER_PREFIX, COT_FOLLOWUP
from constitutional.records import ComparisonRecord, PairRecord
from constitutional.store import RunStore

GOOD = "GOOD"


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def last_options(prompt) -> tuple[str, str, str]:
    """(question, option A, option B) of the last multiple-choice question in a raw or chat prompt."""
    text = prompt if isinstance(prompt, str) else "\n\n".join(m["content"] for m in prompt)
    head, _, tail = text.rpartition("\n\nOptions:\n(A) ")
    question = head.rpartition("\n\n")[2]
    a, _, rest = tail.partition("\n(B) ")
    return question, a, rest.split("\n\n")[0]


class ScriptedJudge:
    """Prefers the option containing GOOD with strength `strength`, plus `bias` towards whatever is shown as (A).

    `by_question` overrides the strength per principle question, to check how an ensemble averages.
    """

    name = "scripted-judge"

    def __init__(self, strength=1.0, bias=0.0, chat=False, by_question=None, reasoning="a is kind and b is not"):
        self.strength, self.bias, self.has_chat_template = strength, bias, chat
        self.by_question = by_question or {}
        self.reasoning = reasoning
        self.scored: list = []
        self.choices: list = []
        self.generated: list = []

    def p_option_a(self, prompt) -> float:
        question, a, b = last_options(prompt)
        strength = self.by_question.get(question, self.strength)
        preference = strength if GOOD in a else -strength if GOOD in b else 0.0
        return sigmoid(preference + self.bias)

    def choice_logprobs(self, prompts, choices):
        self.scored.extend(prompts)
        self.choices.append(list(choices))
        return [[math.log(self.p_option_a(p)), math.log(1.0 - self.p_option_a(p))] for p in prompts]

    def generate(self, prompts, params):
        self.generated.extend(prompts)
        return [self.reasoning(p) if callable(self.reasoning) else self.reasoning for p in prompts]


def pair(i: int, good: str = "a", kind: str = "red_team") -> PairRecord:
    a, b = (f"answer {i} {GOOD}", f"answer {i} plain") if good == "a" else (f"answer {i} plain", f"answer {i} {GOOD}")
    return PairRecord(
        id=f"pair-{i}",
        kind=kind,
        prompt=[{"role": "user", "content": f"question {i}"}],
        a=a,
        b=b,
        constitution="harmless@1.0",
        model="policy",
        params={},
        seed=0,
    )


@pytest.fixture(scope="module")
def constitution():
    return load_constitution("harmless")


def test_labels_follow_the_known_preference_in_both_orders(constitution):
    pairs = [pair(0, "a"), pair(1, "b"), pair(2, "a")]
    config = FeedbackConfig(debias=True, num_demonstrations=0)
    records, rejected = label_pairs(ScriptedJudge(strength=2.0), constitution, pairs, config, seed=0)
    assert not rejected
    expected = sigmoid(2.0)
    for record, p in zip(records, pairs, strict=True):
        want = expected if GOOD in p.a else 1 - expected
        assert record.p_a_first == pytest.approx(want)
        assert record.p_a_second == pytest.approx(want)
        assert record.p_a == pytest.approx(want)
        assert len(record.logprobs) == 2  # one principle, two orders


def test_debiasing_averages_both_orders_and_records_each(constitution):
    judge = ScriptedJudge(strength=1.0, bias=2.0)  # a strong pull towards whichever answer is shown first
    config = FeedbackConfig(debias=True, num_demonstrations=0)
    [record], _ = label_pairs(judge, constitution, [pair(0, "a")], config, seed=0)
    # a shown as (A): sigmoid(1 + 2); a shown as (B): P(B) = 1 - sigmoid(-1 + 2).
    assert record.p_a_first == pytest.approx(sigmoid(3.0))
    assert record.p_a_second == pytest.approx(1 - sigmoid(1.0))
    assert record.p_a == pytest.approx((sigmoid(3.0) + 1 - sigmoid(1.0)) / 2)
    swapped_question = judge.scored[1]
    assert last_options(swapped_question)[1:] == (record.b, record.a)
    stats = label_stats([record])
    assert stats["position_flip_share"] == 1.0  # a wins as (A), loses as (B)
    assert stats["mean_order_gap"] == pytest.approx(sigmoid(3.0) - (1 - sigmoid(1.0)))


def test_without_debiasing_only_the_given_order_is_scored(constitution):
    judge = ScriptedJudge()
    [record], _ = label_pairs(judge, constitution, [pair(0)], FeedbackConfig(num_demonstrations=0), seed=0)
    assert len(judge.scored) == 1 and record.p_a_second is None and record.p_a == record.p_a_first
    assert label_stats([record])["position_flip_share"] is None


def test_ensemble_draws_k_distinct_principles_and_averages_them(constitution):
    strengths = {p.comparison: 0.5 * i for i, p in enumerate(constitution.comparison)}
    judge = ScriptedJudge(by_question=strengths)
    config = FeedbackConfig(num_principles=4, num_demonstrations=0)
    records, _ = label_pairs(judge, constitution, [pair(0), pair(1)], config, seed=3)
    by_id = {p.id: p.comparison for p in constitution.comparison}
    for record in records:
        assert len(set(record.principles)) == 4 and set(record.principles) <= set(by_id)
        expected = sum(sigmoid(strengths[by_id[pid]]) for pid in record.principles) / 4
        assert record.p_a == pytest.approx(expected)
    assert len(judge.scored) == 2 * 4  # one batched call: every principle of every pair
    assert records[0].principles != records[1].principles


def test_principle_draws_are_seeded_per_pair_not_per_chunk(constitution):
    config = FeedbackConfig(num_principles=2, num_demonstrations=1)
    together, _ = label_pairs(ScriptedJudge(), constitution, [pair(0), pair(1)], config, seed=5)
    alone, _ = label_pairs(ScriptedJudge(), constitution, [pair(1)], config, seed=5)
    assert together[1].principles == alone[0].principles


def test_helpfulness_pairs_use_the_helpfulness_questions(constitution):
    config = FeedbackConfig(num_demonstrations=0, helpful_principles=["Which of these responses helps the most?"])
    judge = ScriptedJudge()
    [record], _ = label_pairs(judge, constitution, [pair(0, kind="helpful")], config, seed=0)
    assert record.principles == ["helpful-0"] and record.kind == "helpful"
    assert last_options(judge.scored[0])[0] == "Which of these responses helps the most?"


def test_demonstrations_come_first_each_with_its_own_principle(constitution):
    judge = ScriptedJudge(chat=True)
    label_pairs(judge, constitution, [pair(0)], FeedbackConfig(num_demonstrations=2), seed=1)
    [messages] = judge.scored
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    demo_prompts = {d.prompt for d in constitution.demonstrations.comparison}
    assert sum(any(p in m["content"] for p in demo_prompts) for m in messages[:4:2]) == 2
    assert all(m["content"].startswith(ANSWER_PREFIX) for m in messages[1:4:2])
    questions = {p.comparison for p in constitution.comparison}
    assert all(any(q in m["content"] for q in questions) for m in messages[:4:2])


def test_pretrained_judge_gets_raw_text_and_chat_judge_gets_messages(constitution):
    raw, chat = ScriptedJudge(chat=False), ScriptedJudge(chat=True)
    config = FeedbackConfig(num_demonstrations=0)
    label_pairs(raw, constitution, [pair(0)], config, seed=0)
    label_pairs(chat, constitution, [pair(0)], config, seed=0)
    assert isinstance(raw.scored[0], str) and raw.scored[0].startswith("\n\nHuman: ")
    assert raw.scored[0].endswith(f"\n\nAssistant: {ANSWER_PREFIX}") and raw.choices == [[" (A)", " (B)"]]
    assert isinstance(chat.scored[0], list) and chat.choices == [[f"{ANSWER_PREFIX} (A)", f"{ANSWER_PREFIX} (B)"]]


def test_chain_of_thought_comes_before_scoring_and_is_clamped(constitution):
    judge = ScriptedJudge(strength=5.0)
    config = FeedbackConfig(cot=True, debias=True, num_demonstrations=0)
    records, _ = label_pairs(judge, constitution, [pair(0, "a"), pair(1, "b")], config, seed=0)
    assert len(judge.generated) == 4 and judge.scored[0].endswith(f"a is kind and b is not\n{ANSWER_PREFIX}")
    assert records[0].p_a == pytest.approx(0.6) and records[1].p_a == pytest.approx(0.4)
    assert all(r.clamped and 0.4 <= r.p_a_first <= 0.6 and r.cot == ["a is kind and b is not"] * 2 for r in records)


def test_clamp_bounds_are_configurable_and_can_be_switched_off(constitution):
    wide = FeedbackConfig(cot=True, num_demonstrations=0, clamp_low=0.3, clamp_high=0.7)
    [record], _ = label_pairs(ScriptedJudge(strength=5.0), constitution, [pair(0)], wide, seed=0)
    assert record.p_a == pytest.approx(0.7) and record.clamped
    off = FeedbackConfig(cot=True, num_demonstrations=0, clamp=False)
    [record], _ = label_pairs(ScriptedJudge(strength=5.0), constitution, [pair(0)], off, seed=0)
    assert record.p_a == pytest.approx(sigmoid(5.0)) and not record.clamped
    with pytest.raises(ValueError, match="clamp_low"):
        FeedbackConfig(clamp_low=0.6, clamp_high=0.4)


def test_a_probability_inside_the_bounds_is_not_marked_clamped(constitution):
    config = FeedbackConfig(cot=True, num_demonstrations=0)
    [record], _ = label_pairs(ScriptedJudge(strength=0.2), constitution, [pair(0)], config, seed=0)
    assert record.p_a == pytest.approx(sigmoid(0.2)) and not record.clamped


def test_chat_judge_reasons_in_its_own_turn_then_answers(constitution):
    judge = ScriptedJudge(chat=True)
    label_pairs(judge, constitution, [pair(0)], FeedbackConfig(cot=True, num_demonstrations=0), seed=0)
    [scored] = judge.scored
    assert scored[-2] == {"role": "assistant", "content": "a is kind and b is not"}
    assert scored[-1] == {"role": "user", "content": COT_FOLLOWUP}


def test_unparseable_chain_of_thought_is_rejected_with_the_reason(tmp_path, constitution):
    judge = ScriptedJudge(reasoning=lambda prompt: "(A)" if "answer 1" in str(prompt) else "b is rude and a is not")
    with RunStore(tmp_path / "run") as store:
        store.stage(PAIRS_STAGE).writers()[0].write([pair(0), pair(1), pair(2)])
        summary = label(store, judge, constitution, FeedbackConfig(cot=True, num_demonstrations=0), seed=0)
        [rejected] = store.stage(STAGE).rejected()
        labelled = {r.id for r in store.stage(STAGE).records(ComparisonRecord)}
    assert rejected.id == "pair-1" and "fewer than 3 words" in rejected.reason and "'(A)'" in rejected.reason
    assert labelled == {"pair-0", "pair-2"}
    assert summary["rejected"] == 1 and summary["labels"] == 2 and summary["pairs"] == 3


class Interrupted(Exception):
    pass


class DiesAfter(ScriptedJudge):
    """Scores `calls` batches, then is killed."""

    def __init__(self, calls: int):
        super().__init__()
        self.left = calls

    def choice_logprobs(self, prompts, choices):
        if self.left == 0:
            raise Interrupted
        self.left -= 1
        return super().choice_logprobs(prompts, choices)


def test_resume_after_interruption_labels_only_the_missing_pairs(tmp_path, constitution):
    pairs = [pair(i, "a" if i % 2 else "b") for i in range(7)]
    config = FeedbackConfig(chunk_size=3, num_demonstrations=0)
    with RunStore(tmp_path / "run") as store:
        store.stage(PAIRS_STAGE).writers()[0].write(pairs)
        with pytest.raises(Interrupted):
            label(store, DiesAfter(calls=1), constitution, config, seed=0)
        assert len(store.stage(STAGE).records(ComparisonRecord)) == 3
        second = ScriptedJudge()
        summary = label(store, second, constitution, config, seed=0)
        records = store.stage(STAGE).records(ComparisonRecord)
    assert {last_options(p)[1].split()[1] for p in second.scored} == {"3", "4", "5", "6"}
    assert sorted(r.id for r in records) == sorted(p.id for p in pairs) and summary["labels"] == 7
    assert all((r.p_a > 0.5) == (GOOD in r.a) for r in records)


def test_label_stats_histogram_and_clamped_share():
    def record(p_a: float, clamped: bool) -> ComparisonRecord:
        return ComparisonRecord(
            id=str(p_a),
            kind="red_team",
            prompt=[{"role": "user", "content": "q"}],
            a="x",
            b="y",
            principles=["p"],
            p_a=p_a,
            p_a_first=p_a,
            logprobs=[[0.0, 0.0]],
            clamped=clamped,
            constitution="c@1",
            model="m",
            seed=0,
        )

    stats = label_stats([record(0.05, False), record(0.41, True), record(0.45, True), record(1.0, False)])
    assert stats["p_a_histogram"] == [1, 0, 0, 0, 2, 0, 0, 0, 0, 1]
    assert stats["share_clamped"] == 0.5 and stats["mean_p_a"] == pytest.approx(0.4775)


def test_real_tiny_pretrained_model_labels_through_the_transformers_backend(tmp_path, tiny_base_model_path):
    from constitutional.models import ModelSpec, load_model

    model = load_model(ModelSpec(name=str(tiny_base_model_path), dtype="float32", batch_size=4))
    config = FeedbackConfig(debias=True, num_principles=2, num_demonstrations=1)
    with RunStore(tmp_path / "run") as store:
        store.stage(PAIRS_STAGE).writers()[0].write([pair(0), pair(1, "b")])
        summary = label(store, model, load_constitution("harmless"), config, seed=0)
        records = store.stage(STAGE).records(ComparisonRecord)
    assert summary["labels"] == 2 and sum(summary["p_a_histogram"]) == 2
    for r in records:
        assert len(r.logprobs) == 4 and all(lp < 0 for pair_lp in r.logprobs for lp in pair_lp)
        assert r.p_a == pytest.approx((r.p_a_first + r.p_a_second) / 2)


def test_cli_label_runs_the_stage_resumably_and_prints_the_statistics(tmp_path, tiny_base_model_path):
    from typer.testing import CliRunner

    from constitutional.cli import app

    run_dir = tmp_path / "run"
    with RunStore(run_dir) as store:
        store.stage(PAIRS_STAGE).writers()[0].write([pair(0), pair(1, "b"), pair(2)])
        store.stage(PAIRS_STAGE).start({"made": "by the test"})
        store.stage(PAIRS_STAGE).finish(pairs=3)
    args = ["rl", "label", "--run-dir", str(run_dir), "--models.feedback.name", str(tiny_base_model_path)]
    args += ["--debias", "true", "--num-demonstrations", "0"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "position_flip_share" in first.output and "p_a_histogram" in first.output
    with RunStore(run_dir) as store:
        assert len(store.stage(STAGE).records(ComparisonRecord)) == 3
        assert store.manifest()["stages"][STAGE]["summary"]["labels"] == 3
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "skipped" in again.output
