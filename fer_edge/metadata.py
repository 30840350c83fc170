"""Model metadata carried inside a `.tflite` file.

The JSON travels as a zip archive appended to the flatbuffer (the scheme TFLite's own
"associated files" use): interpreters ignore the trailing bytes, and `zipfile` finds the
archive from the end of the file, so the runtime needs only the standard library to read it.
"""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

METADATA_NAME = "fer_edge.json"
FORMAT = "fer-edge/1"


def embed(tflite_bytes: bytes, metadata: dict) -> bytes:
    """Return the model bytes with `metadata` appended as `fer_edge.json` in a zip archive."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(METADATA_NAME, json.dumps({"format": FORMAT, **metadata}, indent=2, sort_keys=True))
    return bytes(tflite_bytes) + archive.getvalue()


def read(path: str | Path) -> dict | None:
    """Return the metadata embedded in a model file, or None when it carries none."""
    try:
        with zipfile.ZipFile(path) as zf:
            return json.loads(zf.read(METADATA_NAME))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError):
        return None
