"""Prompts in: JSONL, CSV, plain text, a saved Hugging Face dataset, or a built-in demo set.

Every prompt gets a stable id (the one given, else a hash of its content) so reruns and resumes line up.
Empty and over-long prompts are not errors: they come back as rejected records with the reason. A source with
no prompt at all, or none that can be used, is an error: a stage would otherwise finish with nothing done.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from constitutional.errors import InputError
from constitutional.jsonl import read_json_lines, read_text, text_lines
from constitutional.records import PromptRecord, RejectedRecord

BUILTIN_PROMPTS = {
    "red-team": "red_team.jsonl",
    "helpful": "helpful.jsonl",
    # Held out from training, for the evaluate stage.
    "eval-red-team": "eval_red_team.jsonl",
    "eval-helpful": "eval_helpful.jsonl",
}
_ROLES = {"system", "user", "assistant"}


def content_id(messages: list[dict[str, str]]) -> str:
    digest = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()
    return f"p-{digest[:16]}"


def _builtin_path(name: str) -> Path:
    if name not in BUILTIN_PROMPTS:
        raise InputError(
            f"unknown built-in prompt set 'builtin:{name}'",
            hint=f"choose one of: {', '.join('builtin:' + n for n in BUILTIN_PROMPTS)}",
        )
    return Path(str(resources.files("constitutional") / "data" / "prompts" / BUILTIN_PROMPTS[name]))


def _messages_from_row(row: dict[str, Any], column: str, path: Path, line: int) -> list[dict[str, str]]:
    if "messages" in row and column == "prompt":
        messages = row["messages"]
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and m.get("role") in _ROLES and isinstance(m.get("content"), str) for m in messages
        ):
            raise InputError(
                "'messages' must be a list of {role, content} with roles system/user/assistant",
                path=path,
                line=line,
                field="messages",
            )
        return messages
    if column not in row:
        raise InputError(
            f"no '{column}' field",
            path=path,
            line=line,
            field=column,
            hint="give each line a 'prompt' string or 'messages', or pass --prompt-column",
        )
    if not isinstance(row[column], str):
        raise InputError("the prompt must be a string", path=path, line=line, field=column)
    return [{"role": "user", "content": row[column]}]


def _dataset_rows(path: Path, column: str) -> list[tuple[int, dict[str, Any]]]:
    from datasets import load_from_disk

    try:
        dataset = load_from_disk(str(path))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(
            f"not a saved dataset ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})",
            path=path,
            hint="a folder must be a dataset saved with `Dataset.save_to_disk`; else give a .jsonl, .csv or .txt file",
        ) from None
    if not hasattr(dataset, "column_names") or isinstance(dataset.column_names, dict):
        raise InputError("a dataset with splits: save one split", path=path, hint="e.g. dataset['train'].save_to_disk")
    if column not in dataset.column_names and "messages" not in dataset.column_names:
        raise InputError(
            f"dataset has no '{column}' column (columns: {dataset.column_names})",
            path=path,
            field=column,
            hint="pass --prompt-column NAME",
        )
    return [(i + 1, row) for i, row in enumerate(dataset)]


def _csv_rows(path: Path, text: str, column: str) -> list[tuple[int, dict[str, Any]]]:
    # newline="": a quoted value keeps its line breaks, and only \n and \r end a line.
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = []
    try:
        if column not in (reader.fieldnames or []):
            raise InputError(
                f"CSV has no '{column}' column (columns: {reader.fieldnames})",
                path=path,
                line=1,
                field=column,
                hint="pass --prompt-column NAME",
            )
        start = reader.line_num + 1
        for row in reader:
            rows.append((start, row))  # a quoted value may span lines: a row is numbered by its first
            start = reader.line_num + 1
    except csv.Error as err:
        raise InputError(f"malformed CSV: {err}", path=path, line=reader.line_num, hint="check the quoting") from None
    return rows


def _rows(path: Path, column: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) pairs from any supported format."""
    if path.is_dir():
        return _dataset_rows(path, column)
    if path.suffix == ".jsonl":
        return read_json_lines(path)
    text = read_text(path, "a prompt file is .jsonl, .csv or plain text with one prompt per line")
    if path.suffix == ".csv":
        return _csv_rows(path, text, column)
    return [(n, {column: line}) for n, line in enumerate(text_lines(text), start=1) if line.strip()]


def source_path(source: str) -> Path:
    """Where a prompt source lives: the packaged file of `builtin:NAME`, else the path as given."""
    return _builtin_path(source.removeprefix("builtin:")) if source.startswith("builtin:") else Path(source)


def load_prompts(
    source: str, column: str = "prompt", max_chars: int = 2000
) -> tuple[list[PromptRecord], list[RejectedRecord]]:
    """Read prompts from `source` (a path or `builtin:NAME`)."""
    path = source_path(source)
    if not path.exists():
        raise InputError(
            "prompt file not found",
            path=path,
            hint="give a .jsonl, .csv, .txt file, a saved dataset folder, or builtin:red-team",
        )
    accepted: list[PromptRecord] = []
    rejected: list[RejectedRecord] = []
    seen: set[str] = set()
    for line, row in _rows(path, column):
        messages = _messages_from_row(row, column, path, line)
        record_id = str(row["id"]) if row.get("id") not in (None, "") else content_id(messages)
        if record_id in seen:
            raise InputError(
                f"duplicate id '{record_id}'",
                path=path,
                line=line,
                field="id",
                hint="ids must be unique within a prompt file",
            )
        seen.add(record_id)
        last = messages[-1]["content"].strip() if messages else ""
        reason = None
        if not messages or messages[-1]["role"] != "user":
            reason = "the conversation must end with a user message"
        elif not last:
            reason = "empty prompt"
        elif sum(len(m["content"]) for m in messages) > max_chars:
            reason = f"prompt longer than max_prompt_chars={max_chars}"
        if reason:
            rejected.append(RejectedRecord(id=record_id, reason=f"{path}:{line}: {reason}", source=str(path)))
        else:
            accepted.append(PromptRecord(id=record_id, messages=messages, source=source))
    if not accepted:
        found = f"all {len(rejected)} refused; the first: {rejected[0].reason}" if rejected else "the file is empty"
        raise InputError(
            f"no prompt to use ({found})",
            path=path,
            hint="give at least one non-empty prompt, or leave this source out of the recipe (null)",
        )
    return accepted, rejected


def split_refused(
    prompts: Sequence[PromptRecord], reasons: Sequence[str | None]
) -> tuple[list[PromptRecord], list[RejectedRecord]]:
    """(the prompts with no reason against them, the others as rejected records that say why)."""
    kept = [p for p, reason in zip(prompts, reasons, strict=True) if reason is None]
    refused = [
        RejectedRecord(id=p.id, reason=f"{p.source}: {reason}", source=p.source)
        for p, reason in zip(prompts, reasons, strict=True)
        if reason is not None
    ]
    return kept, refused


def require_fitting(source: str, kept: Sequence[PromptRecord], refused: Sequence[RejectedRecord], answered: bool):
    """A prompt file none of whose prompts the model can read is an input error, not a stage of 0 records.

    `answered`: some of its prompts are done already (a resumed stage), so what is left may all be refused.
    """
    if refused and not kept and not answered:
        raise InputError(
            f"none of its {len(refused)} prompt(s) fits the model: {refused[0].reason.removeprefix(f'{source}: ')}",
            path=source,
            hint="shorten the prompts, lower max_new_tokens, or use a model with a longer context window",
        )
