"""CSV and JSONL rows whose every problem becomes an InputError naming the file, the line and the column."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from constitutional.errors import InputError
from constitutional.jsonl import read_json_lines

# Polis and most spreadsheets write agree / disagree / pass as 1 / -1 / 0; plain files may spell them out.
VOTE_WORDS = {"agree": 1.0, "disagree": -1.0, "pass": 0.0}


@dataclass(frozen=True)
class Row:
    """One record of a table: where it starts in its file, and its values by column name."""

    path: Path
    line: int
    values: dict[str, Any]

    def text(self, column: str, *, required: bool = True) -> str | None:
        """The value as stripped text; an empty required value is an error naming the column."""
        raw = self.values.get(column)
        if isinstance(raw, (dict, list)):
            raise self.error(column, "is a list or an object", "write a single value here")
        value = "" if raw is None else str(raw).strip()
        if not value and required:
            raise self.error(column, "is empty", "fill in this value or remove the row")
        return value or None

    def integer(self, column: str, *, required: bool = True) -> int | None:
        value = self.text(column, required=required)
        if value is None:
            return None
        try:
            return int(value)
        except ValueError:
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if number.is_integer():
                return int(number)
            raise self.error(column, f"'{value}' is not a whole number", "write an integer here") from None

    def vote(self, column: str) -> float:
        """A vote as +1 agree, -1 disagree, 0 pass, from a number or a word."""
        value = (self.text(column) or "").lower()
        if value in VOTE_WORDS:
            return VOTE_WORDS[value]
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if number in (-1.0, 0.0, 1.0):
            return number
        raise self.error(column, f"'{value}' is not a vote", "use 1 (agree), -1 (disagree) or 0 (pass)")

    def error(self, column: str, message: str, hint: str) -> InputError:
        return InputError(message, path=self.path, line=self.line, field=column, hint=hint)


def read_csv(path: Path, required: tuple[str, ...]) -> list[Row]:
    """Rows of a CSV file with a header line that names at least `required`."""
    return list(_csv_rows(path, required))


def _csv_rows(path: Path, required: tuple[str, ...]) -> Iterator[Row]:
    if not path.is_file():
        raise InputError("file not found", path=path, hint=f"expected a CSV file with columns {', '.join(required)}")
    start = 1
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle, strict=True)
            header = _header(path, next(reader, None), required)
            start = reader.line_num + 1
            for record in reader:
                if any(cell.strip() for cell in record):
                    yield _row(path, start, header, record)
                # A quoted field may span lines, so a record starts right after the previous one ended.
                start = reader.line_num + 1
    except csv.Error as err:
        raise InputError(
            f"malformed CSV: {err}", path=path, line=start, hint="check the quoting on this line"
        ) from None
    except UnicodeDecodeError as err:
        raise InputError(f"not UTF-8 text (byte {err.start})", path=path, hint="save the file as UTF-8 CSV") from None


def _header(path: Path, header: list[str] | None, required: tuple[str, ...]) -> list[str]:
    if header is None:
        raise InputError("the file is empty", path=path, line=1, hint=f"the first line names the columns: {required}")
    names = [name.strip() for name in header]
    missing = [name for name in required if name not in names]
    if missing:
        raise InputError(
            f"the header lacks column(s) {', '.join(missing)}",
            path=path,
            line=1,
            hint=f"the first line must name the columns {', '.join(required)} (found: {', '.join(names)})",
        )
    return names


def _row(path: Path, line: int, header: list[str], record: list[str]) -> Row:
    if len(record) != len(header):
        raise InputError(
            f"{len(record)} values where the header names {len(header)} columns",
            path=path,
            line=line,
            field=header[min(len(record), len(header)) - 1],
            hint="a value with a comma or a line break in it must be in double quotes",
        )
    return Row(path=path, line=line, values=dict(zip(header, record, strict=True)))


def read_jsonl(path: Path, required: tuple[str, ...]) -> list[Row]:
    """Rows of a JSON Lines file, each an object with at least the `required` keys."""
    rows = []
    for line, record in read_json_lines(path):
        missing = [key for key in required if key not in record]
        if missing:
            raise InputError(
                f"missing key(s) {', '.join(missing)}",
                path=path,
                line=line,
                field=missing[0],
                hint=f"every line needs the keys {', '.join(required)}",
            )
        rows.append(Row(path=path, line=line, values=record))
    return rows


def read_table(path: Path, required: tuple[str, ...]) -> list[Row]:
    """A CSV or JSONL file, told apart by its suffix."""
    return read_jsonl(path, required) if path.suffix == ".jsonl" else read_csv(path, required)
