"""AI-feedback questions: a scripted feedback model whose preferences the test sets, so every label is known."""

from __future__ import annotations

import math
import random
import re

import pytest

from constitutional.comparison import (
    Comparison,
    FeedbackConfig,
    Judgement,
    draw_comparison,
    judge,
    principle_pool,
    probability_first,
)
from constitutional.constitution import load_constitution
from constitutional.prompts import ANSWER_PREFIX, COT_FOLLOWUP

GOOD = "GOOD"


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def last_options(prompt) -> tuple[str, str, str]:
    """(question, option A, option B) of the last multiple-choice question in a raw or chat prompt.

    The options sit inside the question's fence; the principle's question follows the closing fence line.
    """
    text = prompt if isinstance(prompt, str) else "\n\n".join(m["content"] for m in prompt)
    tail = text.rpartition("\n\nOptions:\n(A) ")[2]
    fence_line = re.search(r"\n(----- [0-9a-f]+ -----)\n\n", tail)
    options, after = tail[: fence_line.start()], tail[fence_line.end() :]
    a, _, b = options.partition("\n(B) ")
    return after.split("\n\n")[0], a, b


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


@pytest.fixture(scope="module")
def constitution():
    return load_constitution("harmless")


def comparisons(constitution, config, goods=("a",), seed=0) -> list[Comparison]:
    """One comparison per entry of `goods`, the GOOD answer shown as a or as b, drawn as the stage draws them."""
    drawn = []
    for i, good in enumerate(goods):
        a, b = (
            (f"answer {i} {GOOD}", f"answer {i} plain") if good == "a" else (f"answer {i} plain", f"answer {i} {GOOD}")
        )
        conversation = [{"role": "user", "content": f"question {i}"}]
        pool = principle_pool("red_team", constitution, config)
        drawn.append(draw_comparison(random.Random(f"{seed}:{i}"), conversation, a, b, pool, constitution, config))
    return drawn


def test_labels_follow_the_known_preference_in_both_orders(constitution):
    config = FeedbackConfig(debias=True, num_demonstrations=0)
    judgements = judge(ScriptedJudge(strength=2.0), comparisons(constitution, config, "aba"), config)
    for judgement, good in zip(judgements, "aba", strict=True):
        want = sigmoid(2.0) if good == "a" else 1 - sigmoid(2.0)
        assert isinstance(judgement, Judgement)
        assert judgement.p_a_first == pytest.approx(want) and judgement.p_a_second == pytest.approx(want)
        assert judgement.p_a == pytest.approx(want)
        assert len(judgement.logprobs) == 2  # one principle, two orders


def test_debiasing_averages_both_orders_and_shows_the_swapped_order(constitution):
    model = ScriptedJudge(strength=1.0, bias=2.0)  # a strong pull towards whichever answer is shown first
    config = FeedbackConfig(debias=True, num_demonstrations=0)
    [drawn] = comparisons(constitution, config)
    [judgement] = judge(model, [drawn], config)
    # a shown as (A): sigmoid(1 + 2); a shown as (B): P(B) = 1 - sigmoid(-1 + 2).
    assert judgement.p_a_first == pytest.approx(sigmoid(3.0))
    assert judgement.p_a_second == pytest.approx(1 - sigmoid(1.0))
    assert judgement.p_a == pytest.approx((sigmoid(3.0) + 1 - sigmoid(1.0)) / 2)
    assert last_options(model.scored[1])[1:] == (drawn.b, drawn.a)


def test_without_debiasing_only_the_given_order_is_scored(constitution):
    model, config = ScriptedJudge(), FeedbackConfig(num_demonstrations=0)
    [judgement] = judge(model, comparisons(constitution, config), config)
    assert len(model.scored) == 1 and judgement.p_a_second is None and judgement.p_a == judgement.p_a_first


def test_ensemble_draws_k_distinct_principles_and_averages_them(constitution):
    strengths = {p.comparison: 0.5 * i for i, p in enumerate(constitution.comparison)}
    model = ScriptedJudge(by_question=strengths)
    config = FeedbackConfig(num_principles=4, num_demonstrations=0)
    drawn = comparisons(constitution, config, "aa", seed=3)
    judgements = judge(model, drawn, config)
    for comparison, judgement in zip(drawn, judgements, strict=True):
        assert len({p.id for p in comparison.principles}) == 4
        expected = sum(sigmoid(strengths[p.comparison]) for p in comparison.principles) / 4
        assert judgement.p_a == pytest.approx(expected)
    assert len(model.scored) == 2 * 4  # one batched call: every principle of every comparison
    assert drawn[0].principles != drawn[1].principles


def test_helpfulness_pairs_are_asked_the_helpfulness_questions(constitution):
    config = FeedbackConfig(helpful_principles=["Which of these responses helps the most?"])
    [principle] = principle_pool("helpful", constitution, config)
    assert (principle.id, principle.comparison) == ("helpful-0", "Which of these responses helps the most?")
    assert principle_pool("red_team", constitution, config) == list(constitution.comparison)


def test_demonstrations_come_first_each_with_its_own_principle(constitution):
    model, config = ScriptedJudge(chat=True), FeedbackConfig(num_demonstrations=2)
    judge(model, comparisons(constitution, config, seed=1), config)
    [messages] = model.scored
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    demo_prompts = {d.prompt for d in constitution.demonstrations.comparison}
    assert sum(any(p in m["content"] for p in demo_prompts) for m in messages[:4:2]) == 2
    assert all(m["content"].startswith(ANSWER_PREFIX) for m in messages[1:4:2])
    questions = {p.comparison for p in constitution.comparison}
    assert all(any(q in m["content"] for q in questions) for m in messages[:4:2])


def test_pretrained_judge_gets_raw_text_and_chat_judge_gets_messages(constitution):
    raw, chat = ScriptedJudge(chat=False), ScriptedJudge(chat=True)
    config = FeedbackConfig(num_demonstrations=0)
    judge(raw, comparisons(constitution, config), config)
    judge(chat, comparisons(constitution, config), config)
    assert isinstance(raw.scored[0], str) and raw.scored[0].startswith("\n\nHuman: ")
    assert raw.scored[0].endswith(f"\n\nAssistant: {ANSWER_PREFIX}") and raw.choices == [[" (A)", " (B)"]]
    assert isinstance(chat.scored[0], list) and chat.choices == [[f"{ANSWER_PREFIX} (A)", f"{ANSWER_PREFIX} (B)"]]


def test_chain_of_thought_comes_before_scoring_and_is_clamped(constitution):
    model = ScriptedJudge(strength=5.0)
    config = FeedbackConfig(cot=True, debias=True, num_demonstrations=0)
    judgements = judge(model, comparisons(constitution, config, "ab"), config)
    assert len(model.generated) == 4 and model.scored[0].endswith(f"a is kind and b is not\n{ANSWER_PREFIX}")
    assert judgements[0].p_a == pytest.approx(0.6) and judgements[1].p_a == pytest.approx(0.4)
    assert all(j.clamped and 0.4 <= j.p_a_first <= 0.6 and j.cot == ["a is kind and b is not"] * 2 for j in judgements)


def test_clamp_bounds_are_configurable_and_can_be_switched_off(constitution):
    wide = FeedbackConfig(cot=True, num_demonstrations=0, clamp_low=0.3, clamp_high=0.7)
    [judgement] = judge(ScriptedJudge(strength=5.0), comparisons(constitution, wide), wide)
    assert judgement.p_a == pytest.approx(0.7) and judgement.clamped
    off = FeedbackConfig(cot=True, num_demonstrations=0, clamp=False)
    [judgement] = judge(ScriptedJudge(strength=5.0), comparisons(constitution, off), off)
    assert judgement.p_a == pytest.approx(sigmoid(5.0)) and not judgement.clamped
    with pytest.raises(ValueError, match="clamp_low"):
        FeedbackConfig(clamp_low=0.6, clamp_high=0.4)


def test_a_probability_inside_the_bounds_is_not_marked_clamped(constitution):
    config = FeedbackConfig(cot=True, num_demonstrations=0)
    [judgement] = judge(ScriptedJudge(strength=0.2), comparisons(constitution, config), config)
    assert judgement.p_a == pytest.approx(sigmoid(0.2)) and not judgement.clamped


def test_chat_judge_reasons_in_its_own_turn_then_answers(constitution):
    model, config = ScriptedJudge(chat=True), FeedbackConfig(cot=True, num_demonstrations=0)
    judge(model, comparisons(constitution, config), config)
    [scored] = model.scored
    assert scored[-2] == {"role": "assistant", "content": "a is kind and b is not"}
    assert scored[-1] == {"role": "user", "content": COT_FOLLOWUP}


def test_a_chain_of_thought_without_reasoning_gives_the_reason_and_is_not_scored(constitution):
    model = ScriptedJudge(reasoning=lambda prompt: "(A)" if "answer 1" in str(prompt) else "b is rude and a is not")
    config = FeedbackConfig(cot=True, num_demonstrations=0)
    kept, refused, last = judge(model, comparisons(constitution, config, "aaa"), config)
    assert isinstance(kept, Judgement) and isinstance(last, Judgement)
    assert isinstance(refused, str) and "fewer than 3 words" in refused and "'(A)'" in refused
    assert len(model.scored) == 2


def test_probability_of_the_first_option_is_a_stable_two_way_softmax():
    assert probability_first([math.log(0.3), math.log(0.1)]) == pytest.approx(0.75)
    assert probability_first([-2000.0, -1.0]) == pytest.approx(0.0) and probability_first([-1.0, -2000.0]) == 1.0
