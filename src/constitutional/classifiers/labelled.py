"""Labelled files in: JSONL or CSV rows of a prompt (or messages), an optional answer, a label and an optional
category, wrapper family and harmful-content offset, read as `ClassifierExample`s for evaluation.

The built-in hand-written evaluation sets are `builtin:clf-eval-inputs` (prompts) and `builtin:clf-eval-outputs`
(prompt + answer). Every problem names the file, the line and the field.
"""

from __future__ import annotations

import csv
import io
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from constitutional.classifiers.constitution import GENERAL
from constitutional.classifiers.records import ClassifierExample, Provenance
from constitutional.errors import InputError, from_validation
from constitutional.jsonl import read_json_lines, read_text
from constitutional.sources import content_id

BUILTIN_SETS = {"clf-eval-inputs": "eval_inputs.jsonl", "clf-eval-outputs": "eval_outputs.jsonl"}
_LABELS = {"1": 1, "0": 0, "true": 1, "false": 0, "restricted": 1, "permitted": 0}
_FORMAT = (
    'each row needs "prompt" (or "messages") and "label" (1 restricted, 0 permitted); optional: "answer", '
    '"category", "wrapper", "harmful_from" (character offset in the answer), "id"'
)


def labelled_path(source: str) -> Path:
    """Where a labelled set lives: the packaged file of `builtin:NAME`, else the path as given."""
    if not source.startswith("builtin:"):
        return Path(source)
    name = source.removeprefix("builtin:")
    if name not in BUILTIN_SETS:
        raise InputError(
            f"unknown built-in labelled set '{source}'",
            hint=f"choose one of: {', '.join('builtin:' + n for n in BUILTIN_SETS)}",
        )
    return Path(str(resources.files("constitutional") / "data" / "classifiers" / BUILTIN_SETS[name]))


def _rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    if path.suffix == ".jsonl":
        return read_json_lines(path)
    if path.suffix != ".csv":
        raise InputError("a labelled set is a .jsonl or .csv file", path=path, hint=_FORMAT)
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    rows = []
    try:
        start = 2
        for row in reader:
            rows.append((start, {key: value for key, value in row.items() if value not in (None, "")}))
            start = reader.line_num + 1
    except csv.Error as err:
        raise InputError(f"malformed CSV: {err}", path=path, line=reader.line_num, hint="check the quoting") from None
    return rows


def _label(value: Any, path: Path, line: int) -> int:
    if isinstance(value, bool):
        return int(value)
    text = str(value).strip().lower()
    if text not in _LABELS:
        raise InputError(f"label {value!r} is not 0 or 1", path=path, line=line, field="label", hint=_FORMAT)
    return _LABELS[text]


def _offset(value: Any, path: Path, line: int) -> int | None:
    """A character offset, as JSON gives it (a number or null) or CSV (digits, or nothing)."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise InputError(
        f"harmful_from {value!r} is not a character offset", path=path, line=line, field="harmful_from", hint=_FORMAT
    )


def _messages(row: dict[str, Any], path: Path, line: int) -> list[dict[str, str]]:
    if "messages" in row:
        return row["messages"]  # checked by the record's schema
    if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
        raise InputError("no prompt", path=path, line=line, field="prompt", hint=_FORMAT)
    return [{"role": "user", "content": row["prompt"]}]


def load_labelled(source: str) -> list[ClassifierExample]:
    """The examples of a labelled JSONL/CSV file (or built-in set), in file order, all in the 'test' split."""
    path = labelled_path(source)
    examples: list[ClassifierExample] = []
    seen: set[str] = set()
    for line, row in _rows(path):
        if "label" not in row:
            raise InputError("no label", path=path, line=line, field="label", hint=_FORMAT)
        messages = _messages(row, path, line)
        example_id = str(row.get("id") or content_id([*messages, {"role": "assistant", "content": row.get("answer")}]))
        if example_id in seen:
            raise InputError(f"duplicate id '{example_id}'", path=path, line=line, field="id")
        seen.add(example_id)
        label = _label(row["label"], path, line)
        harmful_from = _offset(row.get("harmful_from"), path, line)
        try:
            examples.append(
                ClassifierExample(
                    id=example_id,
                    messages=messages,
                    answer=row.get("answer"),
                    label=label,
                    category=row.get("category") or GENERAL,
                    harmful_from=harmful_from,
                    wrapper=row.get("wrapper") or "plain",
                    split="test",
                    provenance=Provenance(generator="written", template=source),
                )
            )
        except ValidationError as err:
            raise from_validation(err, path=path, line=line, hint=_FORMAT) from None
    if not examples:
        raise InputError("no labelled row in the file", path=path, hint=_FORMAT)
    return examples


def texts_of(examples: list[ClassifierExample]) -> list[str]:
    """Each example's last user request: what a synthetic item must not duplicate."""
    return [next((m["content"] for m in reversed(e.messages) if m["role"] == "user"), "") for e in examples]
