"""JSON lines output: one compact JSON object a line, flushed at once so `tail -f` and pipes see it."""
from __future__ import annotations

import json
import sys
from typing import TextIO


class JsonLinesWriter:
    """Writes to stdout (`-`) or appends to a file; log messages go to stderr, never here."""

    def __init__(self, target: str):
        self._owned = target != "-"
        self._stream: TextIO = open(target, "a", encoding="utf-8") if self._owned else sys.stdout

    def write(self, record: dict) -> None:
        self._stream.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._stream.flush()

    def close(self) -> None:
        if self._owned:
            self._stream.close()
