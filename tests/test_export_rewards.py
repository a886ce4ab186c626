"""Reward adapters: the preference model and the constitution-conditioned judge behind TRL's reward-function call
(and a real GRPOTrainer step), verl's `compute_score`, and OpenRLHF's `reward_func` and HTTP reward server."""

from __future__ import annotations

import inspect
import json
import math
import threading
import time

import pytest
from test_export import build_run
from test_rl import build_preference_model

from constitutional.errors import InputError
from constitutional.export.openrlhf_reward import completion_of, reward_func
from constitutional.export.scorers import (
    Batcher,
    JudgeReward,
    JudgeScorer,
    ScoreItem,
    load_spec,
    reward_for,
)
from constitutional.export.trl_reward import ConstitutionalReward
from constitutional.export.verl_reward import compute_score, compute_score_batch
from constitutional.models.spec import ModelSpec
from constitutional.reward import PreferenceModel

CONVERSATION = [{"role": "user", "content": "How do I bake bread?"}]
ANSWERS = ["Mix flour, water, salt and yeast, then knead and bake.", "I can't help with stealing.", "Paris."]


@pytest.fixture(scope="module")
def pm_dir(tmp_path_factory, tiny_model_path):
    return build_preference_model(tmp_path_factory.mktemp("pm") / "preference_model", tiny_model_path)


@pytest.fixture(scope="module")
def expected(pm_dir) -> list[float]:
    """The preference model's own scores of ANSWERS, read without any adapter."""
    return PreferenceModel(pm_dir).score([CONVERSATION] * len(ANSWERS), ANSWERS)


# ---- the batcher -------------------------------------------------------------------------------------------------


class SlowScorer:
    """Scores an item by its completion's length; records each batch and whether two threads ever overlapped."""

    def __init__(self, fail_on: str | None = None):
        self.batches: list[list[str]] = []
        self.inside = 0
        self.overlapped = False
        self.fail_on = fail_on

    def score(self, items):
        self.inside += 1
        self.overlapped |= self.inside > 1
        time.sleep(0.05)
        self.inside -= 1
        self.batches.append([i.completion for i in items])
        if self.fail_on in self.batches[-1]:
            raise RuntimeError("scorer broke")
        return [float(len(i.completion)) for i in items]


def _score_from_threads(batcher: Batcher, texts: list[str]) -> tuple[dict[str, object], list[threading.Thread]]:
    results: dict[str, object] = {}

    def one(text: str) -> None:
        try:
            results[text] = batcher.score([ScoreItem(CONVERSATION, text)])[0]
        except RuntimeError as err:
            results[text] = err

    threads = [threading.Thread(target=one, args=(text,)) for text in texts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results, threads


def test_concurrent_single_calls_are_scored_together_one_thread_at_a_time():
    scorer = SlowScorer()
    texts = ["x" * n for n in range(1, 13)]
    results, _ = _score_from_threads(Batcher(scorer), texts)
    assert results == {text: float(len(text)) for text in texts}  # each caller gets its own score
    assert sorted(t for batch in scorer.batches for t in batch) == sorted(texts)  # each scored once
    assert len(scorer.batches) < len(texts)  # callers that arrived while the model was busy shared a batch
    assert not scorer.overlapped


def test_a_failing_batch_fails_its_callers_and_the_next_batch_still_runs():
    scorer = SlowScorer(fail_on="boom")
    batcher = Batcher(scorer)
    with pytest.raises(RuntimeError, match="scorer broke"):
        batcher.score([ScoreItem(CONVERSATION, "boom")])
    assert batcher.score([ScoreItem(CONVERSATION, "fine")]) == [4.0]


# ---- the preference model through each framework's call --------------------------------------------------------


def test_trl_callable_scores_conversational_and_plain_completions_like_the_preference_model(pm_dir, expected):
    reward = ConstitutionalReward(pm_dir)
    assert reward.__name__ == "constitutional_reward"
    assert list(inspect.signature(reward).parameters)[:2] == ["prompts", "completions"]
    chat = reward(
        prompts=[CONVERSATION] * 3,
        completions=[[{"role": "assistant", "content": a}] for a in ANSWERS],
        kind=["helpful"] * 3,
        trainer_state=None,
    )
    plain = reward(prompts=[CONVERSATION[0]["content"]] * 3, completions=ANSWERS)
    assert chat == pytest.approx(expected, abs=1e-5) and plain == pytest.approx(expected, abs=1e-5)
    assert len(set(chat)) == 3


def test_verl_compute_score_single_and_batched(pm_dir, expected):
    extra = {"conversation": CONVERSATION, "id": "r1", "kind": "red_team"}
    single = [compute_score("constitutional/red_team", a, "", extra, reward=str(pm_dir))["score"] for a in ANSWERS]
    batch = compute_score_batch(["constitutional/red_team"] * 3, ANSWERS, [""] * 3, [extra] * 3, reward=str(pm_dir))
    assert single == pytest.approx(expected, abs=1e-5)
    assert [row["score"] for row in batch] == pytest.approx(expected, abs=1e-5)
    with pytest.raises(InputError, match="conversation"):
        compute_score("constitutional/red_team", "text", "", {"id": "r1"}, reward=str(pm_dir))


def test_verl_reward_is_named_by_extra_info_or_the_environment(pm_dir, expected, monkeypatch):
    extra = {"conversation": CONVERSATION}
    assert compute_score("d", ANSWERS[0], "", extra | {"cai_reward": str(pm_dir)})["score"] == pytest.approx(
        expected[0], abs=1e-5
    )
    monkeypatch.setenv("CAI_REWARD", str(pm_dir))
    assert compute_score("d", ANSWERS[1], "", extra)["score"] == pytest.approx(expected[1], abs=1e-5)
    monkeypatch.delenv("CAI_REWARD")
    with pytest.raises(InputError, match="CAI_REWARD"):
        compute_score("d", ANSWERS[1], "", extra)


def test_openrlhf_reward_func_returns_tensors(pm_dir, expected):
    import torch

    prompt = "<|user|>How do I bake bread?<|end|><|assistant|>"
    label = json.dumps({"id": "r1", "kind": "red_team", "conversation": CONVERSATION, "reference": None})
    result = reward_func([prompt + a + "<|end|>" for a in ANSWERS], [prompt] * 3, [label] * 3, reward=str(pm_dir))
    assert set(result) == {"rewards", "scores", "extra_logs"}
    assert isinstance(result["rewards"], torch.Tensor) and result["rewards"].shape == (3,)
    assert result["rewards"].tolist() == pytest.approx(expected, abs=1e-5)
    with pytest.raises(InputError, match="label"):
        reward_func([prompt + "x"], [prompt], ["not json"], reward=str(pm_dir))


def test_the_completion_is_cut_from_the_query():
    prompt = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert completion_of(prompt + "Hello there.<|im_end|><|endoftext|>", prompt) == "Hello there."
    long_prompt = "x" * 500 + prompt
    assert completion_of(long_prompt[300:] + "Kept.</s>", long_prompt) == "Kept."  # OpenRLHF kept the prompt's end
    with pytest.raises(InputError, match="does not contain the end of its prompt"):
        completion_of("something else entirely", prompt)


# ---- the exported reward files, loaded the way each framework loads them ----------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_model_path):
    """A run with a preference model, exported in every format with its reward."""
    from constitutional.export.writer import export_run, reward_spec

    root = tmp_path_factory.mktemp("exported")
    run = build_run(root / "run", build_preference_model(root / "pm", tiny_model_path))
    spec = reward_spec("auto", run, None, "compare")
    for fmt in ("trl", "verl", "openrlhf"):
        export_run(run, fmt, root / fmt, test_share=0.0, reward=spec)
    return root


def _load_file(path, name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_exported_reward_files_agree_with_the_preference_model(exported):
    model = PreferenceModel(exported / "run" / "preference_model")
    reward_json = json.loads((exported / "verl" / "reward.json").read_text())
    assert reward_json == {
        "scorer": "preference_model",
        "path": str((exported / "run" / "preference_model").resolve()),
        "batch_size": 16,
    }
    want = model.score([CONVERSATION], [ANSWERS[0]])[0]
    trl = _load_file(exported / "trl" / "trl_reward.py", "trl_reward_shim")
    assert trl.reward([CONVERSATION], [ANSWERS[0]]) == pytest.approx([want], abs=1e-5)
    verl = _load_file(exported / "verl" / "verl_reward.py", "verl_reward_shim")
    extra = {"conversation": CONVERSATION}
    assert verl.compute_score(data_source="d", solution_str=ANSWERS[0], ground_truth="", extra_info=extra)[
        "score"
    ] == pytest.approx(want, abs=1e-5)
    openrlhf = _load_file(exported / "openrlhf" / "openrlhf_reward.py", "openrlhf_reward_shim")
    label = json.dumps({"conversation": CONVERSATION})
    assert openrlhf.reward_func(["P:" + ANSWERS[0]], ["P:"], [label])["rewards"].tolist() == pytest.approx(
        [want], abs=1e-5
    )


def test_a_reward_file_that_is_not_one_names_the_field(tmp_path):
    bad = tmp_path / "reward.json"
    bad.write_text(json.dumps({"scorer": "judge", "model": {"name": "m"}, "mode": "vote"}))
    with pytest.raises(InputError, match="mode"):
        load_spec(bad)
    with pytest.raises(InputError, match="no such reward file"):
        load_spec(tmp_path / "missing.json")


def test_one_grpo_step_with_the_trl_callable(tmp_path, tiny_model_path, exported):
    """TRL's GRPOTrainer reads the exported prompts and calls our reward with their extra columns."""
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    calls = []
    reward = ConstitutionalReward(exported / "trl" / "reward.json")

    def watched(prompts, completions, **columns):
        calls.append(columns)
        return reward(prompts, completions, **columns)

    watched.__name__ = reward.__name__
    args = GRPOConfig(
        output_dir=str(tmp_path / "grpo"),
        max_steps=1,
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=6,
        use_cpu=True,
        report_to=[],
        disable_tqdm=True,
        save_strategy="no",
        logging_steps=1,
    )
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_path),
        reward_funcs=[watched],
        args=args,
        train_dataset=load_dataset(str(exported / "trl" / "prompts"), split="train"),
        processing_class=AutoTokenizer.from_pretrained(tiny_model_path, padding_side="left"),
    )
    trainer.train()
    assert calls and set(calls[0]) >= {"id", "kind", "reference"}
    logged = [entry for entry in trainer.state.log_history if "rewards/constitutional_reward/mean" in entry]
    assert logged and math.isfinite(logged[0]["rewards/constitutional_reward/mean"])


# ---- the judge ---------------------------------------------------------------------------------------------------


class YesNoJudge:
    """Says a reply follows a principle (and does not go against it) when it contains GOOD; `lean` adds a taste
    for answering Yes to every question."""

    name = "yes-no-judge"
    has_chat_template = False

    def __init__(self, lean: float = 0.0):
        self.lean = lean
        self.questions: list[str] = []

    def choice_logprobs(self, prompts, choices):
        assert list(choices) == [" Yes", " No"]
        rows = []
        for prompt in prompts:
            self.questions.append(prompt)
            follows_asked = "does the reply above follow it" in prompt
            good = "GOOD" in prompt
            p_yes = min(0.99, max(0.01, (0.9 if good == follows_asked else 0.1) + self.lean))
            rows.append([math.log(p_yes), math.log(1 - p_yes)])
        return rows


def _judge_spec(mode: str, **feedback) -> JudgeReward:
    return JudgeReward(model=ModelSpec(name="scripted"), mode=mode, feedback={"debias": True, **feedback}, seed=1)


def test_judge_rating_follows_the_principles_and_a_taste_for_yes_cancels():
    items = [ScoreItem(CONVERSATION, "GOOD answer", "red_team", id="r1"), ScoreItem(CONVERSATION, "meh", id="r2")]
    judge = YesNoJudge()
    assert JudgeScorer(_judge_spec("rate", num_principles=2), judge).score(items) == pytest.approx([0.9, 0.1])
    assert len(judge.questions) == 2 * 2 * 2  # two principles, each asked both ways, per item
    leaning = JudgeScorer(_judge_spec("rate"), YesNoJudge(lean=0.05)).score(items)
    assert leaning == pytest.approx([0.9, 0.1])


def test_judge_rating_asks_under_the_constitution_or_the_helpfulness_questions():
    from constitutional.comparison import DEFAULT_HELPFUL_PRINCIPLES
    from constitutional.constitution import load_constitution

    judge = YesNoJudge()
    scorer = JudgeScorer(_judge_spec("rate"), judge)
    scorer.score([ScoreItem(CONVERSATION, "x", "red_team", id="r1")])
    principles = [p.comparison.strip() for p in load_constitution("harmless").comparison]
    assert any(p in judge.questions[0] for p in principles)
    judge.questions.clear()
    scorer.score([ScoreItem(CONVERSATION, "x", "helpful", id="h1")])
    assert any(p in judge.questions[0] for p in DEFAULT_HELPFUL_PRINCIPLES)


def test_judge_comparison_with_the_reference_both_orders():
    from test_comparison import ScriptedJudge, sigmoid

    scorer = JudgeScorer(_judge_spec("compare"), ScriptedJudge(strength=2.0, bias=1.0))
    items = [
        ScoreItem(CONVERSATION, "GOOD reply", reference="plain reply", id="a"),
        ScoreItem(CONVERSATION, "plain reply", reference="GOOD reply", id="b"),
    ]
    # The judge's lean to option (A) cancels over both orders: P(better) = sigmoid(+-2) averaged with its mirror.
    both = (sigmoid(2.0 + 1.0) + sigmoid(2.0 - 1.0)) / 2
    assert scorer.score(items) == pytest.approx([both, 1 - both])
    with pytest.raises(InputError, match="reference"):
        scorer.score([ScoreItem(CONVERSATION, "GOOD", id="c")])


def test_completions_to_one_prompt_are_judged_under_the_same_principles():
    from constitutional.constitution import load_constitution

    principles = [p.comparison.strip() for p in load_constitution("harmless").comparison]
    judge = YesNoJudge()
    scorer = JudgeScorer(_judge_spec("rate"), judge)
    scorer.score([ScoreItem(CONVERSATION, f"answer {n}", id="same-prompt") for n in range(6)])
    asked = {p for q in judge.questions for p in principles if p in q}
    scorer.score([ScoreItem(CONVERSATION, f"answer {n}", id=f"prompt {n}") for n in range(6)])
    assert len(asked) == 1
    assert len({p for q in judge.questions for p in principles if p in q}) > 1  # other prompts, other draws


def test_a_judge_reward_with_a_chain_of_thought_is_refused():
    with pytest.raises(ValueError, match="chain of thought"):
        _judge_spec("compare", cot=True)


def test_reward_for_loads_once(pm_dir):
    assert reward_for(pm_dir) is reward_for(str(pm_dir))


def test_the_recipes_judge_exported_and_run_on_a_tiny_model(tmp_path, tiny_base_model_path):
    """`--reward judge --config RECIPE`: the recipe's judge and constitution, loaded and asked as reward.json says."""
    from typer.testing import CliRunner

    from constitutional.cli import app
    from constitutional.export.scorers import load_scorer

    run = build_run(tmp_path / "run")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"seed: 5\nmodels:\n  judge:\n    name: {tiny_base_model_path}\nlabel:\n  num_principles: 2\n")
    result = CliRunner().invoke(
        app,
        [
            "export",
            str(run),
            "-f",
            "verl",
            "--to",
            str(tmp_path / "out"),
            "--reward",
            "judge",
            "--config",
            str(recipe),
        ],
    )
    assert result.exit_code == 0, result.output
    spec = load_spec(tmp_path / "out" / "reward.json")
    assert isinstance(spec, JudgeReward) and spec.model.name == str(tiny_base_model_path)
    assert (spec.mode, spec.seed, spec.feedback.num_principles, spec.constitution) == ("compare", 5, 2, "harmless")
    scores = load_scorer(spec).score(
        [ScoreItem(CONVERSATION, a, reference=ANSWERS[1], id="r1") for a in (ANSWERS[0], ANSWERS[2])]
    )
    assert len(scores) == 2 and all(0.0 < s < 1.0 for s in scores) and scores[0] != scores[1]
