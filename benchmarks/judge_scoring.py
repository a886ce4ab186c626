"""Labels/s of AI-feedback scoring (`choice_logprobs`) with a 1.5B judge on a CPU: transformers (bf16, today's path)
against llama.cpp on the quantized GGUF, same model, pairs, questions and principles, one run.

Every arm is `constitutional.comparison.judge` (each question followed by " (A)" and " (B)", a soft label per pair),
once with one option order and once with both (position debiasing: twice the questions, one label per pair):
- transformers: the embedded model's safetensors cache (the Q4_K_M file dequantized), bf16, batched, shared
  beginnings read once per batch;
- llama.cpp: the Q4_K_M GGUF itself, one sequence at a time; a beginning shared with the previous question (the
  few-shot demonstration, the two option orders' common start) is not read again, and only the options'
  differing tokens are read on top of each question.
Agreement: |P(A) llama.cpp - P(A) transformers| per pair. To tell that apart from noise, the first
`--reference-pairs` pairs are also scored by transformers in float32, and both arms are compared with it.
The last line is llama.cpp's labels/s over transformers' with both option orders (the debiased labels a judge
needs: plain, the model was barely above chance); the table gives the one-order ratio too.

    .venv/bin/python benchmarks/judge_scoring.py --pairs 36 --num-demonstrations 1
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import re
import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from constitutional import comparison
from constitutional.constitution import load_constitution
from constitutional.evaluate.hhh import load_items
from constitutional.models import ModelSpec, load_model
from constitutional.models.embedded import gguf_file
from constitutional.models.llamacpp import LlamaCppModel
from constitutional.models.prefix import shared_length

FENCE_TAG = re.compile(r"----- (\w+) -----")
HF, LLAMA = "transformers bf16", "llama.cpp GGUF"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--model", default="qwen2.5-coder-1.5b-instruct", help="An embedded name with a GGUF.")
    parser.add_argument("--pairs", type=int, default=36, help="First N structured items of builtin:hhh-ours.")
    parser.add_argument("--num-demonstrations", type=int, default=1, help="Few-shot comparisons per question.")
    parser.add_argument("--batch-size", type=int, default=16, help="transformers batch size (the spec's default).")
    parser.add_argument("--reference-pairs", type=int, default=8, help="Pairs also scored in float32 (0: none).")
    parser.add_argument("--llama-threads", type=int, default=None, help="llama.cpp threads (default: every core).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--order", default="transformers-first", choices=["transformers-first", "llamacpp-first"])
    return parser.parse_args()


def shared_tokens(model, comparisons, config) -> tuple[float, float, float]:
    """Mean question length, and mean tokens the two option orders of a question share: as rendered now, and if
    the fence line did not depend on the option order (it is hashed from the pasted texts in order)."""
    both = config.model_copy(update={"debias": True})
    questions = comparison.render_questions(comparisons, both)
    chat = comparison.uses_chat(model)
    lengths, now, fence_free = [], [], []
    for given, swapped in zip(questions[::2], questions[1::2], strict=True):
        a, b = (model.render(comparison.scoring_prompt(q.messages, chat)) for q in (given, swapped))
        lengths += [len(a), len(b)]
        now.append(shared_length(a, b))
        tag_a = FENCE_TAG.findall(given.messages[-1]["content"])[-1]
        tag_b = FENCE_TAG.findall(swapped.messages[-1]["content"])[-1]
        same_fence = [*swapped.messages[:-1], {**swapped.messages[-1]}]
        same_fence[-1]["content"] = same_fence[-1]["content"].replace(tag_b, tag_a)
        b_same = model.render(comparison.scoring_prompt(same_fence, chat))
        fence_free.append(shared_length(a, b_same))
    return float(np.mean(lengths)), float(np.mean(now)), float(np.mean(fence_free))


def main() -> None:
    args = parse_args()
    console = Console(width=140)  # the whole table, also when piped to a file
    constitution = load_constitution("harmless")
    plain = comparison.FeedbackConfig(num_demonstrations=args.num_demonstrations)
    debiased = plain.model_copy(update={"debias": True})
    items = [item for item in load_items("builtin:hhh-ours") if item.structured][: args.pairs]
    comparisons = [
        comparison.draw_comparison(
            random.Random(f"{args.seed}:{i}"), item.conversation, *item.responses, constitution.comparison,
            constitution, plain,
        )
        for i, item in enumerate(items)
    ]  # fmt: skip

    started = time.perf_counter()
    llama = LlamaCppModel.load(ModelSpec(name=args.model), gguf_file(args.model), n_threads=args.llama_threads)
    llama_load = time.perf_counter() - started
    started = time.perf_counter()
    hf = load_model(ModelSpec(name=args.model, batch_size=args.batch_size))
    hf_load = time.perf_counter() - started
    backends = {HF: hf, LLAMA: llama}

    chat = comparison.uses_chat(hf)
    questions = comparison.render_questions(comparisons, debiased)
    prompts = [comparison.scoring_prompt(q.messages, chat) for q in questions]
    identical = sum(hf.render(p) == llama.render(p) for p in prompts)
    length, shared_now, shared_fence_free = shared_tokens(llama, comparisons, plain)
    console.print(
        f"{args.model}: {len(comparisons)} pairs, {args.num_demonstrations} demonstration(s), chat={chat}; "
        f"load: llama.cpp {llama_load:.1f} s, transformers {hf_load:.1f} s; threads: torch {torch.get_num_threads()}, "
        f"llama.cpp {llama.llama.n_threads}, "
        f"cpus={os.cpu_count()}, load average before: {os.getloadavg()[0]:.2f}"
    )
    console.print(
        f"questions: {length:.0f} tokens on average; same token ids in both backends: {identical}/{len(prompts)}; "
        f"the two option orders share {shared_now:.0f} leading tokens ({shared_fence_free:.0f} if the fence line "
        "did not depend on the order)"
    )

    # The first calls pay one-off costs (kernel selection, allocator growth, page-ins of the mapped GGUF).
    for model in backends.values():
        comparison.judge(model, comparisons[:2], plain)

    arms = [(backend, config) for config in (plain, debiased) for backend in backends]
    if args.order == "llamacpp-first":
        arms = [(backend, config) for config in (plain, debiased) for backend in reversed(list(backends))]
    results = {}
    for backend, config in arms:
        model = backends[backend]
        read_before = getattr(model, "tokens_read", None)
        started = time.perf_counter()
        judgements = comparison.judge(model, comparisons, config)
        seconds = time.perf_counter() - started
        read = model.tokens_read - read_before if read_before is not None else None
        results[backend, config.debias] = (judgements, seconds, read)
        console.print(f"{backend}, {'both orders' if config.debias else 'one order'}: {seconds:.1f} s")
    load_after = os.getloadavg()[0]

    reference = {}
    if args.reference_pairs:
        del backends[HF], hf
        gc.collect()
        fp32 = load_model(ModelSpec(name=args.model, batch_size=args.batch_size, dtype="float32"))
        reference = {
            j: p.p_a for j, p in enumerate(comparison.judge(fp32, comparisons[: args.reference_pairs], plain))
        }
        del fp32
        gc.collect()

    table = Table(title=f"Judge scoring on a CPU: {args.model}, same pairs, questions and principles")
    columns = ("arm", "orders", "questions", "tokens read", "seconds", "labels/s", "vs transformers")
    for column in (*columns, "mean |ΔP(A)|", "max |ΔP(A)|", "same side"):
        table.add_column(column, justify="left" if column in ("arm", "orders") else "right")
    ratios = {}
    for debias in (False, True):
        base, base_seconds, _ = results[HF, debias]
        for backend in (HF, LLAMA):
            judgements, seconds, read = results[backend, debias]
            rate = len(judgements) / seconds
            ratio = base_seconds / seconds
            ratios[backend, debias] = ratio
            diffs = [abs(j.p_a - b.p_a) for j, b in zip(judgements, base, strict=True)]
            sides = np.mean([(j.p_a >= 0.5) == (b.p_a >= 0.5) for j, b in zip(judgements, base, strict=True)])
            agreement = ("", "", "") if backend == HF else (
                f"{np.mean(diffs):.4f}", f"{max(diffs):.4f}", f"{sides:.0%}"
            )  # fmt: skip
            table.add_row(
                backend, "both" if debias else "one", str(len(judgements) * (2 if debias else 1)),
                "" if read is None else str(read), f"{seconds:.1f}", f"{rate:.2f}", f"{ratio:.2f}", *agreement,
            )  # fmt: skip
    console.print(table)
    if reference:
        for backend in (HF, LLAMA):
            judgements = results[backend, False][0]
            diffs = [abs(judgements[j].p_a - p) for j, p in reference.items()]
            console.print(
                f"noise reference, first {len(reference)} pairs, one order: |P(A) {backend} - P(A) transformers "
                f"float32| mean {np.mean(diffs):.4f}, max {max(diffs):.4f}"
            )
    console.print(f"load average after the arms: {load_after:.2f}")
    console.print(f"one order: llama.cpp / transformers = {ratios[LLAMA, False]:.2f}")
    console.print(f"ratio: {ratios[LLAMA, True]:.2f}")


if __name__ == "__main__":
    main()
