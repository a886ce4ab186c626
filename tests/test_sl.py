"""The critique -> revision loop's logic, with a scripted model that records every call."""

from __future__ import annotations

import random

import pytest
from doubles import DiesOnCall

from constitutional.constitution import load_constitution
from constitutional.errors import InputError
from constitutional.models.base import SamplingParams
from constitutional.records import PromptRecord, SLRecord
from constitutional.sl import SLConfig, generate, revise
from constitutional.store import StageFolder


class ScriptedModel:
    """Answers by echoing what was asked, so tests can see which text reached which prompt."""

    name = "scripted"

    def __init__(self):
        self.calls: list[list] = []

    def generate(self, prompts, params: SamplingParams) -> list[str]:
        self.calls.append(list(prompts))
        return [f"reply#{len(self.calls)} to {p[-1]['content'][:40]}" for p in prompts]

    def choice_logprobs(self, prompts, choices):
        raise AssertionError("the SL loop never scores choices")


def _prompts(n: int) -> list[PromptRecord]:
    return [
        PromptRecord(id=f"p{i}", messages=[{"role": "user", "content": f"question {i}"}], source="t") for i in range(n)
    ]


def test_each_step_is_one_batched_call_and_every_step_is_kept():
    model, constitution = ScriptedModel(), load_constitution("harmless")
    records = revise(model, constitution, _prompts(5), SLConfig(num_revisions=3, num_demonstrations=1), seed=7)
    assert len(model.calls) == 1 + 3 * 2  # initial, then critique + revision per step
    assert all(len(call) == 5 for call in model.calls)
    assert [len(r.steps) for r in records] == [3, 3, 3, 3, 3]
    known = {p.id for p in constitution.critique_revision}
    assert all(step.principle in known and step.critique and step.revision for r in records for step in r.steps)
    assert records[0].constitution == "harmless@1.0" and records[0].model == "scripted"


def test_revision_prompt_carries_the_drawn_principle_the_critique_and_the_previous_answer():
    model, constitution = ScriptedModel(), load_constitution("harmless")
    records = revise(model, constitution, _prompts(1), SLConfig(num_revisions=2, num_demonstrations=0), seed=1)
    second_revision_prompt = model.calls[4][0]
    step = records[0].steps[1]
    principle = constitution.principle(step.principle)
    assert principle.revision in second_revision_prompt[-1]["content"]
    assert {"role": "assistant", "content": step.critique} in second_revision_prompt
    # The answer being revised in step 2 is the revision of step 1.
    assert {"role": "assistant", "content": records[0].steps[0].revision} in second_revision_prompt


def test_direct_revision_skips_the_critique_call():
    model = ScriptedModel()
    records = revise(
        model, load_constitution("harmless"), _prompts(2), SLConfig(num_revisions=2, critique=False), seed=0
    )
    assert len(model.calls) == 1 + 2
    assert all(step.critique is None for r in records for step in r.steps)
    assert not any("Critique request" in m["content"] for call in model.calls for p in call for m in p)


def test_demonstrations_are_prepended_before_the_conversation():
    model, constitution = ScriptedModel(), load_constitution("harmless")
    revise(model, constitution, _prompts(1), SLConfig(num_revisions=1, num_demonstrations=2), seed=3)
    critique_prompt = model.calls[1][0]
    demo_prompts = {d.prompt for d in constitution.demonstrations.critique_revision}
    assert sum(m["content"] in demo_prompts for m in critique_prompt[:-3]) == 2
    assert critique_prompt[-3] == {"role": "user", "content": "question 0"}


def test_principle_draws_are_seeded_per_prompt_not_per_batch():
    constitution = load_constitution("harmless")
    config = SLConfig(num_revisions=3)
    together = revise(ScriptedModel(), constitution, _prompts(4), config, seed=11)
    alone = revise(ScriptedModel(), constitution, _prompts(4)[2:3], config, seed=11)
    assert [s.principle for s in together[2].steps] == [s.principle for s in alone[0].steps]
    other_seed = revise(ScriptedModel(), constitution, _prompts(4), config, seed=12)
    assert [[s.principle for s in r.steps] for r in together] != [[s.principle for s in r.steps] for r in other_seed]


def test_num_principles_limits_the_draws():
    limited = load_constitution("harmless").restricted_to(2, random.Random(0))
    records = revise(ScriptedModel(), limited, _prompts(6), SLConfig(num_revisions=4), seed=0)
    assert len({s.principle for r in records for s in r.steps}) <= 2


def test_generate_stage_writes_red_team_and_helpful_records_and_skips_bad_prompts(tmp_path):
    red = tmp_path / "red.jsonl"
    red.write_text('{"id": "r1", "prompt": "bad thing"}\n{"id": "r2", "prompt": "  "}\n{"id": "r3", "prompt": "x"}\n')
    helpful = tmp_path / "help.txt"
    helpful.write_text("how do I boil an egg\nwhat is rain\n")
    config = SLConfig(red_team_prompts=str(red), helpful_prompts=str(helpful), num_revisions=2, chunk_size=1)
    model = ScriptedModel()
    stage = StageFolder(tmp_path / "run" / "sl_generate")
    summary = generate(stage, model, load_constitution("harmless"), config, seed=0)
    records, rejected = stage.records(SLRecord), stage.rejected()
    assert sorted(r.id for r in records if r.kind == "red_team") == ["r1", "r3"]
    assert len([r for r in records if r.kind == "helpful" and not r.steps]) == 2
    assert [r.id for r in rejected] == ["r2"] and "empty prompt" in rejected[0].reason
    assert summary == {"records": 4, "rejected": 1}


def test_prompts_whose_revision_requests_would_not_fit_the_context_window_are_rejected(tmp_path, tiny_model_path):
    from test_hf_backend import build_short_context_model

    from constitutional.prompts import revision_prompt

    constitution = load_constitution("harmless")
    policy = build_short_context_model(tiny_model_path, tmp_path / "model", positions=1024)
    config = SLConfig(
        red_team_prompts=str(tmp_path / "red.txt"),
        helpful_prompts=str(tmp_path / "helpful.txt"),
        num_revisions=1,
        num_demonstrations=0,
        sampling=SamplingParams(max_new_tokens=8, stop=[]),
    )
    longest = max(constitution.critique_revision, key=lambda p: len(p.critique) + len(p.revision))

    def tokens(text: str, as_request: bool) -> int:
        conversation = [{"role": "user", "content": text}]
        return policy.prompt_tokens(
            [revision_prompt([], conversation, "", longest, "") if as_request else conversation]
        )[0]

    # The shortest repetition whose longest revision request leaves no room for the answer, critique and revision.
    long = next(t for t in ("bake bread " * k for k in range(1, 500)) if tokens(t, True) + 3 * 8 > 1024)
    assert tokens(long, False) + 8 <= 1024  # as a helpfulness prompt, which only needs room for its answer, it fits
    (tmp_path / "red.txt").write_text(f"bake bread\n{long}\n")
    (tmp_path / "helpful.txt").write_text(f"{long} please\n")
    stage = StageFolder(tmp_path / "run" / "sl_generate")
    summary = generate(stage, policy, constitution, config.model_copy(update={"max_prompt_chars": 10**5}), seed=0)
    [refused] = stage.rejected()
    assert "its longest revision request (longest demonstrations, empty answer and critique) of" in refused.reason
    assert "+ 24 tokens the stage needs exceeds the context window of" in refused.reason
    assert refused.reason.endswith("(1024 tokens)") and f"of {tokens(long, True)} tokens" in refused.reason
    kinds = sorted((r.kind, len(r.prompt[-1]["content"]) > len(long)) for r in stage.records(SLRecord))
    assert kinds == [("helpful", True), ("red_team", False)]
    assert summary["rejected"] == 1
    # A file none of whose prompts fits is an error before anything is written, not a stage of 0 records.
    (tmp_path / "red.txt").write_text(f"{long}\n")
    empty = StageFolder(tmp_path / "run2" / "sl_generate")
    with pytest.raises(InputError, match=r"red\.txt: none of its 1 prompt\(s\) fits the model: its longest revision"):
        generate(empty, policy, constitution, config.model_copy(update={"max_prompt_chars": 10**5}), seed=0)
    assert empty.rejected() == [] and empty.records(SLRecord) == []


def test_rerun_after_interruption_generates_only_missing_prompts(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("one\ntwo\nthree\n")
    constitution = load_constitution("harmless")
    config = SLConfig(red_team_prompts=str(prompts), helpful_prompts=None, num_revisions=1, chunk_size=1)
    stage = StageFolder(tmp_path / "run" / "sl_generate")
    with pytest.raises(KeyboardInterrupt):
        generate(stage, DiesOnCall(ScriptedModel(), fail_on_call=5), constitution, config, seed=0)  # in chunk 2
    [done] = stage.records(SLRecord)
    resumed = ScriptedModel()
    generate(stage, resumed, constitution, config, seed=0)
    records = stage.records(SLRecord)
    assert len(resumed.calls) == 2 * 3  # two prompts left, three calls each
    assert done.prompt[-1]["content"] == "one"
    assert [resumed.calls[i][0][-1]["content"] for i in (0, 3)] == ["two", "three"]  # each chunk's first call
    assert sorted(r.id for r in records) == sorted({r.id for r in records}) and len(records) == 3
    assert records[0] == done  # the record written before the kill is kept as it was
