"""YAML loading that remembers where every value came from, so validation errors can name the line."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from constitutional.errors import InputError
from constitutional.jsonl import has_lone_surrogate, read_text


@dataclass
class YamlDocument:
    path: Path
    data: Any
    root: yaml.Node | None

    def line_of(self, loc: Sequence[str | int]) -> int | None:
        """1-based line of the deepest node found along a pydantic error location."""
        node, line = self.root, None
        for key in loc:
            if node is None:
                break
            line = node.start_mark.line + 1
            node = _child(node, key)
        if node is not None:
            line = node.start_mark.line + 1
        return line

    def validate(self, model: type[BaseModel], data: Any = None, prefix: Sequence[str | int] = ()) -> Any:
        """Validate into `model`, turning the first pydantic error into an InputError with file and line."""
        try:
            return model.model_validate(self.data if data is None else data)
        except ValidationError as err:
            raise self.error(err, prefix) from None

    def error(self, err: ValidationError, prefix: Sequence[str | int] = ()) -> InputError:
        """The first problem of a validation error of this document's data, at its file and line."""
        first = err.errors()[0]
        loc = (*prefix, *first["loc"])
        field = ".".join(str(part) for part in loc) or None
        return InputError(
            first["msg"],
            path=self.path,
            line=self.line_of(loc),
            field=field,
            hint=f"fix this value ({err.error_count()} problem(s) in the file in all)",
        )


def _child(node: yaml.Node, key: str | int) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if key_node.value == key:
                return value_node
    if isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
        return node.value[key]
    return None


def load_yaml(path: str | Path) -> YamlDocument:
    """Parse a YAML file; a missing, binary or malformed file comes back as InputError with the line."""
    path = Path(path)
    text = read_text(path, "give a YAML file (check the path, or run from the repository root)")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        raise InputError(
            f"invalid YAML: {err.problem or err.context}",
            path=path,
            line=mark.line + 1 if mark else None,
            hint="check indentation and quoting near this line",
        ) from None
    except yaml.YAMLError as err:  # the reader's refusal of a control character, which carries no mark
        position = getattr(err, "position", None)
        character = getattr(err, "character", None)
        what = f"character #x{character:04x} is not allowed" if isinstance(character, int) else str(err).split("\n")[0]
        raise InputError(
            f"invalid YAML: {what}",
            path=path,
            line=text[:position].count("\n") + 1 if isinstance(position, int) else None,
            hint="is it a YAML text file?",
        ) from None
    except RecursionError:
        raise InputError("invalid YAML: nested too deeply", path=path) from None
    except ValueError as err:
        # A value YAML reads as a number or a date that Python cannot hold: `2024-13-45`, a 5000-digit integer.
        reason = str(err).split(":")[0]
        raise InputError(
            f"invalid YAML value: {reason}", path=path, hint="quote the value to keep it as text"
        ) from None
    if "\\" in text and has_lone_surrogate(data):
        raise InputError(
            "a string holds an unpaired surrogate escape such as \\ud800",
            path=path,
            hint="write the character itself, or both halves of its surrogate pair",
        )
    return YamlDocument(path=path, data=data if data is not None else {}, root=root)
