"""The audit log: one JSON line per block (or classifier failure), rotated by size."""

from __future__ import annotations

import json
import logging
import logging.handlers
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


class AuditLog:
    """Appends JSON lines to `path` through a RotatingFileHandler; with no path it writes nothing."""

    def __init__(self, path: Path | None, max_bytes: int, backups: int):
        self.path = path
        self._logger: logging.Logger | None = None
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        # A logger of its own, outside logging's registry: audit lines never reach the console, and two apps in one
        # process (tests, benchmarks) never write through each other's handlers.
        self._logger = logging.Logger("constitutional.guard.audit")
        self._logger.setLevel(logging.INFO)
        self._handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        self._logger.addHandler(self._handler)

    def write(self, event: str, **fields: Any) -> None:
        if self._logger is None:
            return
        line = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "event": event, **fields}
        self._logger.info(json.dumps(line, ensure_ascii=False))

    def close(self) -> None:
        if self._logger is not None:
            self._logger.removeHandler(self._handler)
            self._handler.close()
            self._logger = None
