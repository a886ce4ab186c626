"""Labels/s of AI feedback read from log-probabilities against judges that write their verdict and are parsed.

The scoring arm is `constitutional.comparison.judge`: one forward pass over each question followed by " (A)" and
by " (B)", a soft label for every pair. Two generating judges ask the same model the same question (the same
rendered prompt, the same principle), write greedily, and have "(A)"/"(B)" parsed out of what they wrote:
- the terse judge writes only its verdict (a few tokens), as TRL's former `HfPairwiseJudge` asked for;
- the reasoned judge first justifies its choice and then concludes, as NeMo-Aligner's LLM-as-a-judge prompt
  asks for (a short justification, then the verdict). A pretrained model is led into it as our CoT mode does
  ("Let me reason about it step by step."), and its conclusion is written after "The better response is".
An answer naming no option (or both) gives no label; those are counted. Labels/s counts labels obtained; the
table also gives pairs/s. All arms label the same pairs: the structured items of the built-in `hhh-ours` set.
The last line compares scoring with the reasoned judge; the table gives the terse judge's ratio beside it.

    .venv/bin/python benchmarks/feedback_throughput.py --pairs 36 --judge-tokens 8 --reasoning-tokens 96
"""

from __future__ import annotations

import argparse
import random
import re
import time
from dataclasses import dataclass

import torch
from rich.console import Console
from rich.table import Table

from constitutional import comparison
from constitutional.constitution import load_constitution
from constitutional.evaluate.hhh import load_items
from constitutional.models import ModelSpec, SamplingParams, load_model
from constitutional.prompts import ANSWER_PREFIX

VERDICT = re.compile(r"\(?\b([AB])\b\)?")


@dataclass
class ArmResult:
    arm: str
    pairs: int
    labels: int
    seconds: float

    @property
    def labels_per_second(self) -> float:
        return self.labels / self.seconds

    @property
    def pairs_per_second(self) -> float:
        return self.pairs / self.seconds


def parse_verdict(text: str) -> int | None:
    """0 for (A), 1 for (B); None when the text names no option, or both."""
    found = {match.group(1) for match in VERDICT.finditer(text)}
    return {"A": 0, "B": 1}[found.pop()] if len(found) == 1 else None


def question_messages(comparisons, config: comparison.FeedbackConfig, cot: bool) -> list:
    """The scoring arm's own questions (one principle, one order each), for a judge to answer in writing."""
    return [q.messages for q in comparison.render_questions(comparisons, config.model_copy(update={"cot": cot}))]


def terse_judge(model, comparisons, config, params: SamplingParams) -> list[int | None]:
    chat = comparison.uses_chat(model)
    prompts = [comparison.scoring_prompt(m, chat) for m in question_messages(comparisons, config, cot=False)]
    return [parse_verdict(text) for text in model.generate(prompts, params)]


def reasoned_judge(model, comparisons, config, reasoning: SamplingParams, verdict: SamplingParams) -> list[int | None]:
    """Justify, then conclude: the reasoning is written first, the verdict after it, and the verdict is parsed."""
    chat = comparison.uses_chat(model)
    questions = question_messages(comparisons, config, cot=True)
    reasoning = reasoning.model_copy(update={"stop": [*reasoning.stop, ANSWER_PREFIX]})
    texts = model.generate([comparison.reasoning_prompt(m, chat) for m in questions], reasoning)
    verdicts = model.generate(
        [comparison.scoring_prompt(m, chat, text.strip()) for m, text in zip(questions, texts, strict=True)], verdict
    )
    return [parse_verdict(text) for text in verdicts]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--model", default="gemma3-270m", help="Embedded name, HF id or local path.")
    parser.add_argument("--pairs", type=int, default=36, help="First N structured items of builtin:hhh-ours.")
    parser.add_argument("--judge-tokens", type=int, default=8, help="max_new_tokens of the terse judge.")
    parser.add_argument(
        "--reasoning-tokens",
        type=int,
        default=comparison.FeedbackConfig().cot_sampling.max_new_tokens,
        help="max_new_tokens of the reasoned judge's justification (default: our CoT mode's).",
    )
    parser.add_argument("--num-demonstrations", type=int, default=1, help="Few-shot comparisons per question.")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--order", default="scoring-first", choices=["scoring-first", "judges-first"])
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    console = Console(width=120)  # the whole table, also when piped to a file
    model = load_model(ModelSpec(name=args.model, batch_size=args.batch_size))
    constitution = load_constitution("harmless")
    config = comparison.FeedbackConfig(num_demonstrations=args.num_demonstrations)
    items = [item for item in load_items("builtin:hhh-ours") if item.structured][: args.pairs]
    comparisons = [
        comparison.draw_comparison(
            random.Random(f"{args.seed}:{i}"),
            item.conversation,
            *item.responses,
            constitution.comparison,
            constitution,
            config,
        )
        for i, item in enumerate(items)
    ]
    terse = SamplingParams(max_new_tokens=args.judge_tokens, temperature=0.0)
    reasoning = SamplingParams(max_new_tokens=args.reasoning_tokens, temperature=0.0)
    arms = {
        "scoring": lambda: comparison.judge(model, comparisons, config),
        "terse judge": lambda: terse_judge(model, comparisons, config, terse),
        "reasoned judge": lambda: reasoned_judge(model, comparisons, config, reasoning, terse),
    }
    # The first calls on CPU pay one-off costs (kernel selection, allocator growth); keep them out of every arm.
    comparison.judge(model, comparisons[: args.batch_size], config)
    terse_judge(model, comparisons[: args.batch_size], config, terse.model_copy(update={"max_new_tokens": 2}))

    console.print(
        f"{model.name}: {len(comparisons)} pairs, {args.num_demonstrations} demonstration(s), terse judge "
        f"max_new_tokens={args.judge_tokens}, reasoning max_new_tokens={args.reasoning_tokens}, "
        f"batch_size={args.batch_size}, torch threads={torch.get_num_threads()}"
    )
    order = list(arms) if args.order == "scoring-first" else [*list(arms)[1:], "scoring"]
    results, outputs = {}, {}
    for arm in order:
        start = time.perf_counter()
        outputs[arm] = arms[arm]()
        seconds = time.perf_counter() - start
        labels = len(outputs[arm]) if arm == "scoring" else sum(v is not None for v in outputs[arm])
        results[arm] = ArmResult(arm, len(comparisons), labels, seconds)
        console.print(f"{arm}: {seconds:.1f} s")

    scored_sides = [0 if j.p_a >= 0.5 else 1 for j in outputs["scoring"]]
    scoring_rate = results["scoring"].labels_per_second
    table = Table(title="AI feedback throughput (same model, pairs, prompts and principles)")
    columns = ("arm", "pairs", "labels", "unparsed", "seconds", "pairs/s", "labels/s", "scoring's ratio", "agrees")
    for column in columns:
        table.add_column(column, justify="left" if column == "arm" else "right")
    for arm, r in results.items():
        parsed = [(v, s) for v, s in zip(outputs[arm], scored_sides, strict=True) if v is not None]
        agreement = "" if arm == "scoring" or not parsed else f"{sum(v == s for v, s in parsed) / len(parsed):.0%}"
        table.add_row(
            arm,
            str(r.pairs),
            str(r.labels),
            str(r.pairs - r.labels),
            f"{r.seconds:.1f}",
            f"{r.pairs_per_second:.2f}",
            f"{r.labels_per_second:.2f}",
            f"{scoring_rate / max(r.labels_per_second, 1e-9):.2f}",
            agreement,
        )
    console.print(table)
    console.print("agrees: how often a judge's parsed verdict picks the side the scores prefer")
    print(f"ratio: {scoring_rate / max(results['reasoned judge'].labels_per_second, 1e-9):.2f}", flush=True)


if __name__ == "__main__":
    main()
