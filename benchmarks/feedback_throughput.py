"""Labels/s of AI feedback read from log-probabilities against a judge that writes its verdict and is parsed.

The scoring arm is `constitutional.feedback.judge`: one forward pass over each question followed by " (A)" and
by " (B)", a soft label for every pair. The generating arm asks the same model the same question (the same
rendered prompt, the same principle) but lets it write its answer greedily and parses "(A)"/"(B)" out of the
text, as the LLM judges of NeMo-Aligner and TRL's former `HfPairwiseJudge` do; an answer naming no option (or
both) gives no label, and those are counted. Labels/s counts labels obtained. Both arms label the same pairs:
the structured items of the built-in `hhh-ours` set (a conversation and two answers each).

    .venv/bin/python benchmarks/feedback_throughput.py --pairs 36 --judge-tokens 8
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

from constitutional import feedback
from constitutional.constitution import load_constitution
from constitutional.evaluate.hhh import load_items
from constitutional.models import ModelSpec, SamplingParams, load_model
from constitutional.prompts import comparison_demonstration_turns, comparison_messages

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


def parse_verdict(text: str) -> int | None:
    """0 for (A), 1 for (B); None when the text names no option, or both."""
    found = {match.group(1) for match in VERDICT.finditer(text)}
    return {"A": 0, "B": 1}[found.pop()] if len(found) == 1 else None


def question_prompts(model, comparisons):
    """The scoring arm's own questions, rendered the same way, for the judge to answer in writing."""
    chat = feedback.uses_chat(model)
    prompts = []
    for c in comparisons:
        prefix = comparison_demonstration_turns([(demo, p.comparison) for demo, p in c.demos])
        messages = comparison_messages(prefix, c.conversation, c.a, c.b, c.principles[0].comparison, cot=False)
        prompts.append(feedback.scoring_prompt(messages, chat))
    return prompts


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma3-270m", help="Embedded name, HF id or local path.")
    parser.add_argument("--pairs", type=int, default=36, help="First N structured items of builtin:hhh-ours.")
    parser.add_argument("--judge-tokens", type=int, default=8, help="max_new_tokens of the generating judge.")
    parser.add_argument("--num-demonstrations", type=int, default=1, help="Few-shot comparisons per question.")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--order", default="scoring-first", choices=["scoring-first", "judge-first"])
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    console = Console()
    model = load_model(ModelSpec(name=args.model, batch_size=args.batch_size))
    constitution = load_constitution("harmless")
    config = feedback.FeedbackConfig(num_demonstrations=args.num_demonstrations)
    items = [item for item in load_items("builtin:hhh-ours") if item.structured][: args.pairs]
    comparisons = [
        feedback.draw_comparison(
            random.Random(f"{args.seed}:{i}"),
            item.conversation,
            *item.responses,
            constitution.comparison,
            constitution,
            config,
        )
        for i, item in enumerate(items)
    ]
    prompts = question_prompts(model, comparisons)
    params = SamplingParams(max_new_tokens=args.judge_tokens, temperature=0.0)
    # The first calls on CPU pay one-off costs (kernel selection, allocator growth); keep them out of both arms.
    feedback.judge(model, comparisons[: args.batch_size], config)
    model.generate(prompts[: args.batch_size], params.model_copy(update={"max_new_tokens": 2}))

    console.print(
        f"{model.name}: {len(comparisons)} pairs, {args.num_demonstrations} demonstration(s), judge max_new_tokens="
        f"{args.judge_tokens}, batch_size={args.batch_size}, torch threads={torch.get_num_threads()}"
    )
    results, outputs = {}, {}
    order = ["scoring", "judge"] if args.order == "scoring-first" else ["judge", "scoring"]
    for arm in order:
        start = time.perf_counter()
        if arm == "scoring":
            outputs[arm] = feedback.judge(model, comparisons, config)
            labels = len(outputs[arm])
        else:
            outputs[arm] = [parse_verdict(text) for text in model.generate(prompts, params)]
            labels = sum(v is not None for v in outputs[arm])
        results[arm] = ArmResult(arm, len(comparisons), labels, time.perf_counter() - start)
        console.print(f"{arm}: {results[arm].seconds:.1f} s")

    scored_sides = [0 if j.p_a >= 0.5 else 1 for j in outputs["scoring"]]
    parsed = [(v, s) for v, s in zip(outputs["judge"], scored_sides, strict=True) if v is not None]
    table = Table(title="AI feedback throughput (same model, pairs, prompts and principles)")
    for column in ("arm", "pairs", "labels", "unparsed", "seconds", "labels/s"):
        table.add_column(column, justify="left" if column == "arm" else "right")
    for arm in ("scoring", "judge"):
        r = results[arm]
        label = "log-prob scoring" if arm == "scoring" else f"generate {args.judge_tokens} tokens + parse"
        table.add_row(
            label,
            str(r.pairs),
            str(r.labels),
            str(r.pairs - r.labels),
            f"{r.seconds:.1f}",
            f"{r.labels_per_second:.2f}",
        )
    console.print(table)
    agreement = sum(v == s for v, s in parsed) / len(parsed) if parsed else float("nan")
    console.print(f"the judge's parsed verdicts agree with the scored side on {agreement:.0%} of {len(parsed)} pairs")
    ratio = results["scoring"].labels_per_second / max(results["judge"].labels_per_second, 1e-9)
    print(f"ratio: {ratio:.2f}", flush=True)


if __name__ == "__main__":
    main()
