"""Prompts in: JSONL, CSV, plain text, a saved Hugging Face dataset, or a built-in demo set.

Every prompt gets a stable id (the one given, else a hash of its content) so reruns and resumes line up.
Empty and over-long prompts are not errors: they come back as rejected records with the reason.
"""

from __future__ import annotations

import csv
import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

from constitutional.errors import InputError
from constitutional.jsonl import read_json_lines
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


def _rows(path: Path, column: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) pairs from any supported format."""
    if path.is_dir():
        from datasets import load_from_disk

        dataset = load_from_disk(str(path))
        if column not in dataset.column_names and "messages" not in dataset.column_names:
            raise InputError(
                f"dataset has no '{column}' column (columns: {dataset.column_names})",
                path=path,
                field=column,
                hint="pass --prompt-column NAME",
            )
        return [(i + 1, row) for i, row in enumerate(dataset)]
    if path.suffix == ".jsonl":
        return read_json_lines(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        if column not in (reader.fieldnames or []):
            raise InputError(
                f"CSV has no '{column}' column (columns: {reader.fieldnames})",
                path=path,
                line=1,
                field=column,
                hint="pass --prompt-column NAME",
            )
        # Line numbers count the header as line 1.
        return [(number, row) for number, row in enumerate(reader, start=2)]
    return [(n, {column: line}) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


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
    return accepted, rejected
