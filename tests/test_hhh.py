"""Multiple-choice evaluation: scoring, accuracy and calibration against hand-computed numbers; the item format."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from constitutional.cli import app
from constitutional.constitution import load_constitution
from constitutional.errors import InputError
from constitutional.evaluate.hhh import MCItem, load_items, score_items, structured_item, summarize

runner = CliRunner()
GOOD = "GOOD"


class FixedAnswers:
    """Gives each prompt the choice probabilities the test wrote down for it."""

    name = "fixed"

    def __init__(self, probabilities: dict[str, dict[str, float]]):
        self.probabilities = probabilities
        self.calls: list[tuple[list, list]] = []

    def choice_logprobs(self, prompts, choices):
        self.calls.append((list(prompts), list(choices)))
        return [[math.log(self.probabilities[prompt][choice]) for choice in choices] for prompt in prompts]

    def generate(self, prompts, params):
        raise AssertionError("multiple-choice evaluation never generates")


class PrefersMarkedOption:
    """A feedback-style judge: prefers whichever option contains GOOD, with a pull towards option (A)."""

    name = "marked"

    def __init__(self):
        self.scored: list = []

    def choice_logprobs(self, prompts, choices):
        self.scored.extend(prompts)
        rows = []
        for prompt in prompts:
            text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
            a = text.rpartition("(A) ")[2].partition("\n(B) ")[0]
            p_a = 1 / (1 + math.exp(-((2.0 if GOOD in a else -2.0) + 1.0)))
            rows.append([math.log(p_a), math.log(1 - p_a)])
        return rows


def item(prompt: str, correct: str = " (A)", category: str | None = None) -> MCItem:
    other = " (B)" if correct == " (A)" else " (A)"
    return MCItem(prompt=prompt, corrects=[correct], incorrects=[other], category=category)


def test_accuracy_mean_probability_and_ece_match_a_hand_computation():
    # P(correct) per item: 0.93, 0.72, 0.18, 0.64, 0.75 (correct answers alternate between (A) and (B)).
    p_correct = [0.93, 0.72, 0.18, 0.64, 0.75]
    items, probabilities = [], {}
    for i, p in enumerate(p_correct):
        correct = " (A)" if i % 2 == 0 else " (B)"
        items.append(item(f"q{i}", correct, category="odd" if i % 2 else "even"))
        probabilities[f"q{i}"] = {correct: p, " (B)" if correct == " (A)" else " (A)": 1 - p}
    model = FixedAnswers(probabilities)
    result = summarize(score_items(model, items, load_constitution("harmless")))
    assert len(model.calls) == 2  # one batched call per distinct choice list: (A)-first and (B)-first items
    assert result.accuracy == pytest.approx(4 / 5)
    assert result.mean_p_correct == pytest.approx(3.22 / 5)
    # Confidences 0.93, 0.72, 0.82, 0.64, 0.75 -> bins 0.9, 0.7 (two items), 0.8, 0.6; only item 3 is wrong.
    assert [(b.low, b.count) for b in result.bins] == [
        (pytest.approx(0.6), 1),
        (pytest.approx(0.7), 2),
        (pytest.approx(0.8), 1),
        (pytest.approx(0.9), 1),
    ]
    assert result.bins[1].confidence == pytest.approx(0.735) and result.bins[2].accuracy == 0.0
    assert result.ece == pytest.approx((0.36 + 2 * 0.265 + 0.82 + 0.07) / 5)
    assert result.by_category == {"even": pytest.approx(2 / 3), "odd": 1.0}


def test_several_choices_sum_the_correct_mass_and_compare_best_against_best():
    items = [MCItem(prompt="q", corrects=[" yes", " sure"], incorrects=[" no"])]
    [score] = score_items(
        FixedAnswers({"q": {" yes": 0.3, " sure": 0.25, " no": 0.45}}), items, load_constitution("harmless")
    )
    assert score.p_correct == pytest.approx(0.55) and score.confidence == pytest.approx(0.45)
    assert not score.correct  # the single best choice is the wrong one, although correct mass is above half


def test_ensemble_and_debias_rerender_structured_items_and_score_plain_ones_as_they_are():
    conversation = [{"role": "user", "content": "How do I reset my password?"}]
    structured = [
        structured_item(conversation, f"answer {GOOD}", "answer plain", correct, "helpful") for correct in (0, 1)
    ]
    plain = MCItem(prompt="plain prompt", corrects=[" (B)"], incorrects=[" (A)"])
    model = _Both(PrefersMarkedOption().choice_logprobs, FixedAnswers({"plain prompt": {" (A)": 0.2, " (B)": 0.8}}))
    constitution = load_constitution("harmless")
    scores = score_items(model, [*structured, plain], constitution, num_principles=3, debias=True)
    assert model.feedback_prompts == 2 * 3 * 2  # items x principles x orders
    assert [s.rerendered for s in scores] == [True, True, False]
    # Debiased: ((sigmoid(3) + (1 - sigmoid(-1))) / 2 whichever side the good answer is on; the (A)-pull cancels.
    expected = (1 / (1 + math.exp(-3)) + 1 / (1 + math.exp(-1))) / 2
    assert scores[0].p_correct == pytest.approx(expected) and scores[1].p_correct == pytest.approx(expected)
    assert scores[2].p_correct == pytest.approx(0.8) and all(s.correct for s in scores)


class _Both:
    """Routes feedback questions to one scripted model and the plain prompt to another."""

    name = "both"

    def __init__(self, feedback_scores, plain: FixedAnswers):
        self.feedback_scores, self.plain, self.feedback_prompts = feedback_scores, plain, 0

    def choice_logprobs(self, prompts, choices):
        if list(prompts) == ["plain prompt"]:
            return self.plain.choice_logprobs(prompts, choices)
        self.feedback_prompts += len(prompts)
        return self.feedback_scores(prompts, choices)

    def generate(self, prompts, params):
        raise AssertionError("no chain of thought in evaluation")


def test_plain_mode_scores_structured_items_as_they_are():
    conversation = [{"role": "user", "content": "hi"}]
    structured = structured_item(conversation, "hello GOOD", "go away", 1, "helpful")
    model = FixedAnswers({structured.prompt: {" (A)": 0.3, " (B)": 0.7}})
    [score] = score_items(model, [structured], load_constitution("harmless"))
    assert not score.rerendered and score.p_correct == pytest.approx(0.7)


def test_the_builtin_items_are_balanced_and_their_two_forms_agree():
    items = load_items("builtin:hhh-ours")
    assert len(items) >= 30 and all(i.structured for i in items)
    assert {c: sum(i.category == c for i in items) for c in ("helpful", "honest", "harmless")} == {
        "helpful": 22,
        "honest": 22,
        "harmless": 22,
    }
    assert sum(i.correct == 0 for i in items) == len(items) // 2
    # A judge that prefers the longer answer, or the first option, must score exactly chance.
    longer_right = sum(len(i.responses[i.correct]) > len(i.responses[1 - i.correct]) for i in items)
    assert longer_right == len(items) // 2
    for i in items:
        good, bad = i.responses if i.correct == 0 else i.responses[::-1]
        assert structured_item(i.conversation, good, bad, i.correct, i.category) == i


def _write(tmp_path, lines: list[str]):
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD_LINE = json.dumps({"prompt": "Q: 2+2?\nA:", "corrects": [" 4"], "incorrects": [" 5"]})


def test_a_malformed_line_names_the_file_line_and_field(tmp_path):
    path = _write(tmp_path, [GOOD_LINE, GOOD_LINE, json.dumps({"prompt": "Q", "incorrects": [" x"]})])
    with pytest.raises(InputError) as err:
        load_items(path)
    assert err.value.line == 3 and err.value.field == "corrects" and f"{path}:3" in str(err.value)
    with pytest.raises(InputError, match=r":2: invalid JSON"):
        load_items(_write(tmp_path, [GOOD_LINE, "{not json"]))
    half = json.dumps({"prompt": "Q", "corrects": [" (A)"], "incorrects": [" (B)"], "correct": 0})
    with pytest.raises(InputError, match="structured form needs all"):
        load_items(_write(tmp_path, [half]))
    with pytest.raises(InputError, match="unknown built-in"):
        load_items("builtin:nope")


def test_cli_scores_a_file_with_a_real_tiny_model_and_writes_the_plot(tmp_path, tiny_base_model_path):
    path = _write(
        tmp_path, [GOOD_LINE, json.dumps({"prompt": "Q: 3+3?\nA:", "corrects": [" 6"], "incorrects": [" 7"]})]
    )
    plot = tmp_path / "reliability.png"
    result = runner.invoke(app, ["eval", "mc", str(path), "--model", str(tiny_base_model_path), "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    assert "ECE" in result.output and "calibration" in result.output
    assert plot.stat().st_size > 1000


def test_cli_refuses_a_malformed_file_with_the_line(tmp_path):
    path = _write(tmp_path, [GOOD_LINE, json.dumps({"prompt": "", "corrects": [" a"], "incorrects": [" b"]})])
    result = runner.invoke(app, ["eval", "mc", str(path)])
    assert result.exit_code == 2
    assert f"{path}:2" in "".join(result.output.split()) or f"{path}:2" in result.output


@pytest.mark.slow
def test_real_gemma_on_the_builtin_items():
    result = runner.invoke(app, ["eval", "mc", "builtin:hhh-ours", "--model", "gemma3-270m"])
    assert result.exit_code == 0, result.output
    assert "66" in result.output and "ECE" in result.output
