"""JSON lines output: one compact JSON object a line, flushed at once so `tail -f` and pipes see it."""
from __future__ import annotations

import json
import os
import sys
from typing import TextIO

from fer_edge.errors import FerEdgeError


class JsonLinesWriter:
    """Writes to stdout (`-`) or appends to a file; log messages go to stderr, never here."""

    def __init__(self, target: str):
        self._owned, self._name = target != "-", "stdout" if target == "-" else target
        self._stream: TextIO = open(target, "a", encoding="utf-8") if self._owned else sys.stdout

    def write(self, record: dict) -> None:
        try:
            self._stream.write(json.dumps(record, separators=(",", ":")) + "\n")
            self._stream.flush()
        except BrokenPipeError:  # `fer-edge daemon --jsonl - | head -1`, or a FIFO: the reader has gone
            if not self._owned:  # else Python flushes stdout again at exit and prints a second error
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise FerEdgeError(f"output.jsonl: {self._name} was closed by its reader (a pipe that ended); "
                               "stopping") from None

    def close(self) -> None:
        if self._owned:
            self._stream.close()
