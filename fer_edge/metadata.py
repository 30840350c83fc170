"""Model metadata carried inside a `.tflite` file.

The JSON travels as a zip archive appended to the flatbuffer (the scheme TFLite's own
"associated files" use): interpreters ignore the trailing bytes, and `zipfile` finds the
archive from the end of the file, so the runtime needs only the standard library to read it.
"""
from __future__ import annotations

import io
import json
import zipfile
import zlib
from pathlib import Path

from fer_edge.errors import FerEdgeError
from fer_edge.spec import CONTRACT

METADATA_NAME = "fer_edge.json"


def embed(tflite_bytes: bytes, metadata: dict) -> bytes:
    """Return the model bytes with `metadata` appended as `fer_edge.json` in a zip archive."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(METADATA_NAME, json.dumps({"format": CONTRACT, **metadata}, indent=2, sort_keys=True))
    return bytes(tflite_bytes) + archive.getvalue()


def read(path: str | Path) -> dict | None:
    """Return the metadata embedded in a model file, or None when it carries none.

    Metadata that is there but damaged raises FerEdgeError: running a model whose classes and
    preprocessing cannot be read would give wrong answers, not an error.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            if METADATA_NAME not in zf.namelist():
                return None
            meta = json.loads(zf.read(METADATA_NAME))
    except zipfile.BadZipFile as error:
        if "not a zip file" in str(error):  # no archive appended: a model without metadata
            return None
        raise _damaged(path, error) from None
    # A damaged archive fails while inflating (zlib.error, EOFError), on a bogus compression method
    # (NotImplementedError), a flipped encryption flag (RuntimeError), a bogus offset (OSError) or
    # undecodable JSON (ValueError).
    except (zlib.error, EOFError, NotImplementedError, RuntimeError, OSError, ValueError) as error:
        raise _damaged(path, error) from None
    if not isinstance(meta, dict):
        raise FerEdgeError(f"{path}: its embedded {METADATA_NAME} is not a JSON object")
    return meta


def _damaged(path, error: Exception) -> FerEdgeError:
    reason = " ".join(str(error).split()) or type(error).__name__
    return FerEdgeError(f"{path}: its embedded {METADATA_NAME} is damaged ({reason})")
