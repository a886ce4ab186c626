"""JSON Lines input whose errors name the file and line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from constitutional.errors import InputError


def read_json_lines(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line; a line that is not a JSON object is an InputError."""
    if not path.is_file():
        raise InputError("file not found", path=path, hint="give a JSONL file, one JSON object per line")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
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
        if not isinstance(row, dict):
            raise InputError("each line must be a JSON object", path=path, line=number)
        rows.append((number, row))
    return rows
