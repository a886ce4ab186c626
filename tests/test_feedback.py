"""The rl_label stage: pairs to comparison records, statistics, rejections and resume, with a scripted model."""

from __future__ import annotations

import pytest
from doubles import DiesOnCall
from test_comparison import GOOD, ScriptedJudge, last_options, sigmoid

from constitutional.comparison import FeedbackConfig
from constitutional.constitution import load_constitution
from constitutional.errors import InputError
from constitutional.feedback import label, label_pairs, label_stats
from constitutional.records import ComparisonRecord, LabelStats, PairRecord
from constitutional.store import StageFolder


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


@pytest.fixture
def out(tmp_path) -> StageFolder:
    return StageFolder(tmp_path / "run" / "rl_label")


def test_records_carry_the_label_the_principles_and_the_provenance(constitution):
    pairs = [pair(0, "a"), pair(1, "b")]
    config = FeedbackConfig(num_principles=2, debias=True, num_demonstrations=0)
    records, rejected = label_pairs(ScriptedJudge(strength=2.0), constitution, pairs, config, seed=4)
    assert not rejected
    by_id = {p.id for p in constitution.comparison}
    for record, p in zip(records, pairs, strict=True):
        assert (record.id, record.kind, record.a, record.b, record.prompt) == (p.id, p.kind, p.a, p.b, p.prompt)
        assert record.p_a == pytest.approx(sigmoid(2.0) if GOOD in p.a else 1 - sigmoid(2.0))
        assert len(set(record.principles)) == 2 and set(record.principles) <= by_id
        assert len(record.logprobs) == 4  # two principles, two orders
        assert (record.model, record.constitution, record.seed) == ("scripted-judge", constitution.tag, 4)


def test_principle_draws_are_seeded_per_pair_not_per_chunk(constitution):
    config = FeedbackConfig(num_principles=2, num_demonstrations=1)
    together, _ = label_pairs(ScriptedJudge(), constitution, [pair(0), pair(1)], config, seed=5)
    alone, _ = label_pairs(ScriptedJudge(), constitution, [pair(1)], config, seed=5)
    other_seed, _ = label_pairs(ScriptedJudge(), constitution, [pair(1)], config, seed=6)
    assert together[1].principles == alone[0].principles != other_seed[0].principles


def test_helpfulness_pairs_use_the_helpfulness_questions(constitution):
    config = FeedbackConfig(num_demonstrations=0, helpful_principles=["Which of these responses helps the most?"])
    model = ScriptedJudge()
    [record], _ = label_pairs(model, constitution, [pair(0, kind="helpful")], config, seed=0)
    assert record.principles == ["helpful-0"] and record.kind == "helpful"
    assert last_options(model.scored[0])[0] == "Which of these responses helps the most?"


def test_stats_measure_how_much_the_option_order_mattered(constitution):
    config = FeedbackConfig(debias=True, num_demonstrations=0)
    biased = ScriptedJudge(strength=1.0, bias=2.0)  # a wins as (A), loses as (B)
    [record], _ = label_pairs(biased, constitution, [pair(0, "a")], config, seed=0)
    stats = label_stats([record])
    assert isinstance(stats, LabelStats) and stats.position_flip_share == 1.0
    assert stats.mean_order_gap == pytest.approx(sigmoid(3.0) - (1 - sigmoid(1.0)))
    [one_order], _ = label_pairs(ScriptedJudge(), constitution, [pair(0)], FeedbackConfig(), seed=0)
    assert label_stats([one_order]).position_flip_share is None and label_stats([one_order]).mean_order_gap is None


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
    assert stats.p_a_histogram == [1, 0, 0, 0, 2, 0, 0, 0, 0, 1] and stats.labels == 4
    assert stats.share_clamped == 0.5 and stats.mean_p_a == pytest.approx(0.4775)
    assert label_stats([]) == LabelStats(
        labels=0,
        mean_p_a=None,
        p_a_histogram=[0] * 10,
        share_clamped=None,
        position_flip_share=None,
        mean_order_gap=None,
    )


def test_unusable_chain_of_thought_is_kept_as_rejected_with_the_reason(out, constitution):
    model = ScriptedJudge(reasoning=lambda prompt: "(A)" if "answer 1" in str(prompt) else "b is rude and a is not")
    config = FeedbackConfig(cot=True, num_demonstrations=0)
    summary = label(out, [pair(0), pair(1), pair(2)], model, constitution, config, seed=0)
    [rejected] = out.rejected()
    assert rejected.id == "pair-1" and "fewer than 3 words" in rejected.reason and "'(A)'" in rejected.reason
    assert "scripted-judge" in rejected.source
    assert {r.id for r in out.records(ComparisonRecord)} == {"pair-0", "pair-2"}
    assert summary == {"pairs": 3, "rejected": 1, **label_stats(out.records(ComparisonRecord)).model_dump()}
    assert summary["labels"] == 2


def test_resume_after_interruption_labels_only_the_missing_pairs(out, constitution):
    pairs = [pair(i, "a" if i % 2 else "b") for i in range(7)]
    # With a chain of thought every chunk starts with one generate call; the second one dies.
    config = FeedbackConfig(chunk_size=3, cot=True, num_demonstrations=0)
    with pytest.raises(KeyboardInterrupt):
        label(out, pairs, DiesOnCall(ScriptedJudge(), fail_on_call=2), constitution, config, seed=0)
    assert len(out.records(ComparisonRecord)) == 3
    resumed = ScriptedJudge()
    summary = label(out, pairs, resumed, constitution, config, seed=0)
    records = out.records(ComparisonRecord)
    assert {last_options(p)[1].split()[1] for p in resumed.scored} == {"3", "4", "5", "6"}
    assert sorted(r.id for r in records) == sorted(p.id for p in pairs) and summary["labels"] == 7
    assert all((r.p_a > 0.5) == (GOOD in r.a) for r in records)


def test_no_pairs_is_refused_with_what_to_run_first(out, constitution):
    with pytest.raises(InputError, match="no sampled pairs") as err:
        label(out, [], ScriptedJudge(), constitution, FeedbackConfig(), seed=0)
    assert "cai rl sample" in str(err.value) and not out.dir.exists()


def test_real_tiny_pretrained_model_labels_through_the_transformers_backend(out, tiny_base_model_path):
    from constitutional.models import ModelSpec, load_model

    model = load_model(ModelSpec(name=str(tiny_base_model_path), dtype="float32", batch_size=4))
    config = FeedbackConfig(debias=True, num_principles=2, num_demonstrations=1)
    summary = label(out, [pair(0), pair(1, "b")], model, load_constitution("harmless"), config, seed=0)
    assert summary["labels"] == 2 and sum(summary["p_a_histogram"]) == 2
    for r in out.records(ComparisonRecord):
        assert len(r.logprobs) == 4 and all(lp < 0 for pair_lp in r.logprobs for lp in pair_lp)
        assert r.p_a == pytest.approx((r.p_a_first + r.p_a_second) / 2)
