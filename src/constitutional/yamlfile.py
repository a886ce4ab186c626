"""YAML loading that remembers where every value came from, so validation errors can name the line."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from constitutional.errors import InputError


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
            first = err.errors()[0]
            loc = (*prefix, *first["loc"])
            field = ".".join(str(part) for part in loc) or None
            raise InputError(
                first["msg"],
                path=self.path,
                line=self.line_of(loc),
                field=field,
                hint=f"fix this value ({err.error_count()} problem(s) in the file in all)",
            ) from None


def _child(node: yaml.Node, key: str | int) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if key_node.value == key:
                return value_node
    if isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
        return node.value[key]
    return None


def load_yaml(path: str | Path) -> YamlDocument:
    """Parse a YAML file; syntax errors come back as InputError with the line."""
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", path=path, hint="check the path, or run from the repository root")
    text = path.read_text(encoding="utf-8")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        raise InputError(
            f"invalid YAML: {err.problem}",
            path=path,
            line=mark.line + 1 if mark else None,
            hint="check indentation and quoting near this line",
        ) from None
    return YamlDocument(path=path, data=data if data is not None else {}, root=root)
