"""One error type for bad input: it names the file, the line and the field, and says what to do."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Input the toolkit refuses; the message points at the exact place and the fix."""

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
        hint: str | None = None,
    ):
        self.path, self.line, self.field, self.hint = path, line, field, hint
        where = ""
        if path is not None:
            where = f"{path}" + (f":{line}" if line is not None else "")
        if field:
            where = f"{where} field '{field}'" if where else f"field '{field}'"
        text = f"{where}: {message}" if where else message
        if hint:
            text += f"\n  -> {hint}"
        super().__init__(text)


class ModelUnavailableError(RuntimeError):
    """A model server could not be reached, or kept failing (429/5xx), after the client's retries."""


def from_validation(err, *, path: str | Path | None = None, line: int | None = None, hint: str | None = None):
    """The first problem of a pydantic ValidationError as an InputError naming its field."""
    first = err.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or None
    return InputError(first["msg"], path=path, line=line, field=field, hint=hint)
