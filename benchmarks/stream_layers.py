"""The streaming output classifier by the decoder layer its head reads: quality, and what scoring costs in the guard.

The guard loads its own copy of the backbone and drops the layers after the head's (`drop_layers_after`), so a head
on an earlier layer is cheaper in front of another model. This trains one head per layer on the same classifier
data (a finished `cai clf run`'s `clf_data` records, the recipe's output settings otherwise), evaluates each on the
synthetic test split and the hand-written sets exactly as `clf_eval` does, then times the guard's incremental
scoring (one `push` per token of the hand-written answers) with the backbone cut after each layer. One process,
one backbone: heads are trained on the full model first, then the model is cut from the last layer down.

    .venv/bin/python benchmarks/stream_layers.py --run runs/classifiers --layers 4 8 12 16 -1
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from constitutional.classifiers.evaluation import evaluate_set
from constitutional.classifiers.labelled import load_labelled
from constitutional.classifiers.records import ClassifierExample
from constitutional.classifiers.stream_model import StreamModel, decoder_layers, drop_layers_after
from constitutional.classifiers.stream_training import load_backbone, train_stream_classifier
from constitutional.classifiers.training import training_examples
from constitutional.jsonl import read_json_lines
from constitutional.recipe import load_recipe


def classifier_data(run: Path) -> list[ClassifierExample]:
    return [ClassifierExample.model_validate(row) for part in sorted(run.glob("clf_data/part-*.jsonl"))
            for _, row in read_json_lines(part)]  # fmt: skip


def seconds_per_token(classifier: StreamModel, examples: list[ClassifierExample], max_tokens: int) -> float:
    """The guard's cost: each answer pushed one token's text at a time, as a stream arrives."""
    tokens, started = 0, time.perf_counter()
    for item in examples:
        ids, ends = classifier.answer_tokens(item.answer)
        stream = classifier.start(item.messages)
        for start, end in zip([0, *ends[: max_tokens - 1]], ends[:max_tokens], strict=False):
            stream.push(item.answer[start:end])
        tokens += min(len(ids), max_tokens)
    return (time.perf_counter() - started) / tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/classifiers"), help="a finished classifier run")
    parser.add_argument("--config", default="recipes/classifiers.yaml", help="its recipe (output settings, sets)")
    parser.add_argument("--layers", type=int, nargs="+", default=[4, 8, 12, 16, -1])
    parser.add_argument("--timed-answers", type=int, default=4, help="hand-written answers pushed per layer")
    parser.add_argument("--timed-tokens", type=int, default=48, help="tokens pushed per timed answer")
    args = parser.parse_args()

    config = load_recipe(args.config).classifiers
    examples = classifier_data(args.run)
    chosen = training_examples(examples, answers=True, train_on_contested=config.train_on_contested)
    sets = {"synthetic test": [e for e in examples if e.split == "test" and not e.contested and e.answer]}
    sets |= {source: [e for e in load_labelled(source) if e.answer] for source in config.eval.datasets}
    sets = {name: items for name, items in sets.items() if items}
    backbone = load_backbone(config.output)
    depth = len(decoder_layers(backbone.model))
    rows = {}
    for layer in args.layers:
        settings = config.output.model_copy(update={"layer": layer})
        classifier = train_stream_classifier(chosen, settings, backbone=backbone).classifier
        results = {name: evaluate_set(name, items, [], classifier, [], settings.max_answer_tokens).stream.answers
                   for name, items in sets.items()}  # fmt: skip
        rows[layer] = (classifier, results)
        Console().print(
            f"layer {layer % depth}: " + "; ".join(f"{name} AUROC {m.auroc}" for name, m in results.items())
        )
    timed = list(sets.values())[-1][: args.timed_answers]
    cost = {}
    for layer in sorted(args.layers, key=lambda layer: layer % depth, reverse=True):
        drop_layers_after(backbone.model, layer % depth)
        cost[layer] = seconds_per_token(rows[layer][0], timed, args.timed_tokens)

    table = Table(title=f"output classifier by layer ({config.output.backbone}, {depth} layers, {len(chosen)} train)")
    table.add_column("layer")
    for name in sets:
        table.add_column(f"{name}: AUROC / recall / FPR")
    table.add_column("guard ms/token")
    for layer in args.layers:
        _, results = rows[layer]
        cells = [
            f"{m.auroc:.3f} / {m.recall:.3f} / {m.fpr:.3f}" if (m := results[name]).auroc is not None else "-"
            for name in sets
        ]
        table.add_row(f"{layer % depth}", *cells, f"{cost[layer] * 1000:.1f}")
    Console().print(table)


if __name__ == "__main__":
    main()
