"""Reading users' text files (JSON Lines, CSV, plain text, YAML) with errors that name the file and line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from constitutional.errors import InputError


def read_text(path: Path, hint: str | None = None) -> str:
    """The file as text: UTF-8, with or without a byte-order mark. A missing, unreadable or binary file, or a
    folder, is an InputError saying which; `hint` says what the file should be."""
    if not path.exists():
        raise InputError("file not found", path=path, hint=hint or "check the path")
    if path.is_dir():
        raise InputError("is a folder, not a file", path=path, hint=hint or "give the path of a file")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InputError(f"cannot read the file: {err.strerror}", path=path, hint=hint) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise InputError(
            f"not UTF-8 text (byte {err.start} is {data[err.start : err.start + 1]!r}): is it a binary file?",
            path=path,
            line=line,
            hint="save it as UTF-8 text" + (f"; {hint}" if hint else ""),
        ) from None


def text_lines(text: str) -> list[str]:
    """Lines as an editor numbers them: split at "\\n" only (a JSON string may hold U+2028 or a form feed)."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def has_lone_surrogate(value: Any) -> bool:
    """Whether any text in a parsed document holds half a surrogate pair (JSON's or YAML's "\\ud800"): such
    text cannot be written as UTF-8 or tokenized, so readers refuse it up front."""
    seen: set[int] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return True
        elif isinstance(item, dict | list | tuple) and id(item) not in seen:
            seen.add(id(item))  # YAML anchors can make a structure that contains itself
            stack.extend(item.keys() if isinstance(item, dict) else ())
            stack.extend(item.values() if isinstance(item, dict) else item)
    return False


def read_json_lines(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line; a line that is not a JSON object is an InputError."""
    rows = []
    text = read_text(path, "give a JSONL file, one JSON object per line")
    for number, line in enumerate(text_lines(text), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(
                f"invalid JSON: {err.msg} (column {err.colno})",
                path=path,
                line=number,
                hint="each line must be one JSON object",
            ) from None
        except (ValueError, RecursionError) as err:
            # Numbers of thousands of digits, arrays nested thousands deep: valid JSON that Python will not read.
            reason = "nested too deeply" if isinstance(err, RecursionError) else str(err).split(";")[0]
            raise InputError(f"unreadable JSON: {reason}", path=path, line=number) from None
        if not isinstance(row, dict):
            raise InputError("each line must be a JSON object", path=path, line=number)
        if "\\u" in line and has_lone_surrogate(row):
            raise InputError(
                "a string holds an unpaired surrogate escape such as \\ud800",
                path=path,
                line=number,
                hint="write the character itself, or both halves of its surrogate pair",
            )
        rows.append((number, row))
    return rows
