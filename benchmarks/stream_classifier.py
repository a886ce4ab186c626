"""Generation tokens/s with and without the streaming output classifier attached: same model, prompts and settings,
one run, arms interleaved.

The classifier is attached the cheap way (`classifiers.attached.attach`): its backbone is the generating model, so a
forward hook hands the value head the hidden states generation computes anyway, and a stopping criterion runs the
head once per token. Its threshold is set to 1.0 here, which no score exceeds, so both arms generate exactly the same
tokens (greedy decoding; checked) and the difference is the classifier's cost alone. A trained classifier folder
(`--classifier`) is used when given; otherwise a freshly initialised head of the default shape, which costs the same.

For comparison, a third row times the guard's way of scoring the same answers when the generating model is another
one: the classifier's own incremental forward (`StreamModel.start` + one `push` per token), as a share of the
generation time. It does not enter the overhead line.

    .venv/bin/python benchmarks/stream_classifier.py --prompts 8 --max-new-tokens 128 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from rich.console import Console
from rich.table import Table
from transformers import StoppingCriteria

from constitutional.classifiers.attached import GenerationWatch, attach
from constitutional.classifiers.saved import load_output_classifier
from constitutional.classifiers.settings import StreamClassifierSettings
from constitutional.classifiers.stream_model import StreamModel, ValueHead
from constitutional.models import ModelSpec, SamplingParams, load_model
from constitutional.sources import load_prompts

PLAIN, ATTACHED = "generation alone", "classifier attached"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m-instruct", help="The generating model (and backbone).")
    parser.add_argument("--classifier", default=None, help="A saved output-classifier folder trained on --model.")
    parser.add_argument("--prompts", type=int, default=8, help="First N prompts of builtin:helpful.")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="Each arm runs this many times, interleaved.")
    parser.add_argument("--skip-own-forward", action="store_true", help="Leave out the guard-mode comparison row.")
    return parser.parse_args()


def classifier_for(policy, folder: str | None) -> StreamModel:
    if folder:
        classifier = load_output_classifier(folder, backbone=policy)
    else:
        settings = StreamClassifierSettings()
        torch.manual_seed(0)
        head = ValueHead(policy.model.config.hidden_size, settings.head_hidden)
        classifier = StreamModel(policy, head, settings.layer, threshold=0.5)
    classifier.threshold = 1.0  # never crossed: both arms generate the same tokens
    return classifier


class TimedWatch:
    """The classifier's watch, with the time spent in its stopping criterion (the head, once per token) summed: the
    classifier's own cost, which the two arms' wall times show only through the machine's noise."""

    def __init__(self, watch: GenerationWatch):
        self.watch, self.seconds = watch, 0.0

    def __call__(self, prompt_length: int, indices: list[int]) -> StoppingCriteria:
        criterion, timed = self.watch(prompt_length, indices), self

        class Timed(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                started = time.perf_counter()
                stop = criterion(input_ids, scores, **kwargs)
                timed.seconds += time.perf_counter() - started
                return stop

        return Timed()


def generate_attached(classifier: StreamModel, policy, prompts, params) -> tuple[list[str], float]:
    """Answers generated with the classifier attached, and the seconds spent in it."""
    with attach(classifier, policy) as watch:
        timed = TimedWatch(watch)
        return policy.generate(prompts, params, watch=timed), timed.seconds


def own_forward_seconds(classifier: StreamModel, prompts, answers: list[str]) -> float:
    """Score each answer as the guard does in front of another model: its own forward, one push per token."""
    started = time.perf_counter()
    for prompt, answer in zip(prompts, answers, strict=True):
        stream = classifier.start(prompt)
        _, ends = classifier.answer_tokens(answer)
        begin = 0
        for end in ends:
            stream.push(answer[begin:end])
            begin = end
    return time.perf_counter() - started


def main() -> None:
    args = parse_args()
    console = Console(width=140)
    policy = load_model(ModelSpec(name=args.model, batch_size=args.batch_size))
    classifier = classifier_for(policy, args.classifier)
    prompts = [p.messages for p in load_prompts("builtin:helpful")[0][: args.prompts]]
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.0, stop=[])
    load_before = os.getloadavg()[0]
    console.print(
        f"{args.model}, {len(prompts)} prompts, batch {args.batch_size}, {args.max_new_tokens} new tokens, greedy; "
        f"head: {'from ' + args.classifier if args.classifier else 'fresh, default shape'} (layer "
        f"{classifier.layer}); torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, "
        f"load average before: {load_before:.2f}"
    )
    # One-off costs (allocator growth, kernel choice for these shapes) are paid before timing, by both arms.
    warm_up = params.model_copy(update={"max_new_tokens": 16})
    policy.generate(prompts, warm_up)
    generate_attached(classifier, policy, prompts, warm_up)

    seconds = {PLAIN: 0.0, ATTACHED: 0.0}
    inside = 0.0  # of the attached arm's time, spent in the classifier
    texts = {}
    for _ in range(args.rounds):
        for arm in (PLAIN, ATTACHED):
            started = time.perf_counter()
            if arm == PLAIN:
                texts[arm] = policy.generate(prompts, params)
            else:
                texts[arm], spent = generate_attached(classifier, policy, prompts, params)
                inside += spent
            seconds[arm] += time.perf_counter() - started
    same = sum(a == b for a, b in zip(texts[PLAIN], texts[ATTACHED], strict=True))
    tokens = sum(len(policy.tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts[PLAIN])
    own = None if args.skip_own_forward else own_forward_seconds(classifier, prompts, texts[PLAIN])
    load_after = os.getloadavg()[0]

    overhead = seconds[ATTACHED] / seconds[PLAIN] - 1.0
    table = Table(title=f"Streaming output classifier overhead: {args.model}, same prompts and settings")
    for column in ("arm", "rounds", "seconds", "tokens", "tokens/s", "vs generation alone"):
        table.add_column(column, justify="left" if column == "arm" else "right")
    for arm in (PLAIN, ATTACHED):
        rate = tokens * args.rounds / seconds[arm]
        table.add_row(
            arm, str(args.rounds), f"{seconds[arm]:.1f}", str(tokens * args.rounds), f"{rate:.1f}",
            "" if arm == PLAIN else f"{overhead:+.2%}",
        )  # fmt: skip
    if own is not None:
        share = own / (seconds[PLAIN] / args.rounds)
        table.add_row(
            "own forward per token (guard mode, not attached)", "1", f"{own:.1f}", str(tokens),
            f"{tokens / own:.1f}", f"+{share:.0%} of generation time",
        )  # fmt: skip
    console.print(table)
    console.print(
        f"time inside the attached classifier: {inside * 1000:.0f} ms, {inside / seconds[ATTACHED]:.2%} of its arm "
        f"({inside / (tokens * args.rounds) * 1e6:.0f} µs per token)"
    )
    console.print(f"identical answers in both arms: {same}/{len(prompts)}; load average after: {load_after:.2f}")
    console.print(f"overhead: {overhead:.2%}")


if __name__ == "__main__":
    main()
