"""Tokens/s of the batched SL-CAI loop against the same loop sending one request at a time.

The sequential arm is how LangChain's ConstitutionalChain drives a model: for each prompt in turn, an
answer, then per revision a critique call and a revision call, each with a single prompt. Both arms run
`constitutional.sl.revise` itself on one shared model; the sequential arm only wraps the model so every
`generate` is split into single-prompt calls. Generated tokens are counted with the model's tokenizer on
the texts every call returns, identically in both arms and outside the timed region.

Defaults are the demo recipe's SL settings (`make demo`): its policy and batch size, one demonstration, its
answer length and penalties; decoding is greedy so both arms write (nearly) the same texts.

    .venv/bin/python benchmarks/sl_throughput.py --prompts 20 --revisions 1 --max-new-tokens 96
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from counting import CountingModel
from rich.console import Console
from rich.table import Table

from constitutional.constitution import load_constitution
from constitutional.models import LanguageModel, ModelSpec, Prompt, SamplingParams, load_model
from constitutional.models.hf import TransformersModel
from constitutional.recipe import DEMO_RECIPE, load_recipe
from constitutional.sl import SLConfig, revise
from constitutional.sources import load_prompts


@dataclass
class OneAtATime:
    """The same model, but every batch is sent as single-prompt requests, in order (ConstitutionalChain style)."""

    model: LanguageModel

    @property
    def name(self) -> str:
        return self.model.name

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[str]:
        return [self.model.generate([prompt], params)[0] for prompt in prompts]

    def choice_logprobs(self, prompts: Sequence[Prompt], choices: Sequence[str]) -> list[list[float]]:
        return [self.model.choice_logprobs([prompt], choices)[0] for prompt in prompts]


@dataclass
class ArmResult:
    arm: str
    calls: int
    prompts: int
    completions: int
    tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds


def run_arm(arm: str, counter: CountingModel, policy: LanguageModel, tokenizer, prompts, constitution, config, seed):
    start = time.perf_counter()
    revise(policy, constitution, prompts, config, seed)
    seconds = time.perf_counter() - start
    tokens = sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in counter.completions)
    return ArmResult(arm, counter.calls, len(prompts), len(counter.completions), tokens, seconds)


def parse_args() -> argparse.Namespace:
    demo = load_recipe(DEMO_RECIPE)
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--model", default=demo.models.policy.name, help="Embedded name, HF id or local path.")
    parser.add_argument("--prompts", type=int, default=demo.models.policy.batch_size, help="First N red-team prompts.")
    parser.add_argument("--revisions", type=int, default=1, help="Critique -> revision steps per prompt.")
    parser.add_argument("--max-new-tokens", type=int, default=demo.sl.sampling.max_new_tokens)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=demo.models.policy.batch_size,
        help="Sequences per forward pass in the batched arm.",
    )
    parser.add_argument("--num-demonstrations", type=int, default=demo.sl.num_demonstrations, help="Few-shot demos.")
    # Greedy by default so both arms decode (nearly) the same texts and their token counts are comparable;
    # with --temperature > 0 both arms still use the same per-step seeds.
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--order", default="sequential-first", choices=["sequential-first", "batched-first"])
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    console = Console(width=120)  # the whole table, also when piped to a file
    model = load_model(ModelSpec(name=args.model, batch_size=args.batch_size, dtype=args.dtype))
    if not isinstance(model, TransformersModel):
        raise SystemExit("this benchmark needs the transformers backend (it counts tokens with the tokenizer)")
    prompts = load_prompts("builtin:red-team")[0][: args.prompts]
    constitution = load_constitution("harmless")
    demo_sampling = load_recipe(DEMO_RECIPE).sl.sampling
    config = SLConfig(
        num_revisions=args.revisions,
        num_demonstrations=args.num_demonstrations,
        chunk_size=len(prompts),
        sampling=demo_sampling.model_copy(
            update={"max_new_tokens": args.max_new_tokens, "temperature": args.temperature}
        ),
    )
    # The first generate on CPU pays one-off costs (kernel selection, allocator growth); keep them out of both arms.
    warmup = SamplingParams(max_new_tokens=4, temperature=0.0)
    model.generate([p.messages for p in prompts[: args.batch_size]], warmup)
    model.generate([prompts[0].messages], warmup)

    console.print(
        f"{model.name}: {len(prompts)} prompts, {args.revisions} revision(s), max_new_tokens={args.max_new_tokens}, "
        f"batch_size={args.batch_size}, dtype={model.model.dtype}, torch threads={torch.get_num_threads()}"
    )
    arms = {
        "sequential": lambda counter: OneAtATime(counter),
        "batched": lambda counter: counter,
    }
    order = ["sequential", "batched"] if args.order == "sequential-first" else ["batched", "sequential"]
    results = {}
    for arm in order:
        counter = CountingModel(model)
        results[arm] = run_arm(
            arm, counter, arms[arm](counter), model.tokenizer, prompts, constitution, config, args.seed
        )
        console.print(f"{arm}: {results[arm].seconds:.1f} s")

    table = Table(title="SL-CAI generation throughput (same model, prompts, constitution, sampling)")
    for column in ("arm", "calls", "prompts", "completions", "generated tokens", "seconds", "tokens/s"):
        table.add_column(column, justify="left" if column == "arm" else "right")
    for arm in ("sequential", "batched"):
        r = results[arm]
        table.add_row(
            r.arm,
            str(r.calls),
            str(r.prompts),
            str(r.completions),
            str(r.tokens),
            f"{r.seconds:.1f}",
            f"{r.tokens_per_second:.1f}",
        )
    console.print(table)
    ratio = results["batched"].tokens_per_second / results["sequential"].tokens_per_second
    print(f"ratio: {ratio:.2f}", flush=True)


if __name__ == "__main__":
    main()
