"""Write artifacts atomically: into a temporary file beside the target, then rename over it."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from fer_edge.errors import FerEdgeError


@contextlib.contextmanager
def atomic_path(target: str | Path):
    """Yield a temporary path in the target's folder; rename it onto `target` only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + target.suffix, dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts get the usual permissions
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_json(target: str | Path, obj) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def check_can_create(target: str | Path, flag: str, folder: bool = False) -> None:
    """Fail before any expensive work when `target` (a file or folder) could not be written.

    Nothing is left behind: a nameless temporary file is created and removed in the nearest
    existing folder, and `target`, where it exists, must be of the kind asked for.
    """
    target = Path(target)
    if target.exists() and target.is_dir() != folder:
        raise FerEdgeError(f"{flag}: {target} is a {'file' if folder else 'folder'}; give a {'folder' if folder else 'file'} path")
    probe = target
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe != target and not probe.is_dir():
        raise FerEdgeError(f"{flag}: cannot create {target}: {probe} is a file, not a folder")
    try:  # a real write, not os.access: root passes access checks on read-only mounts and /proc
        with tempfile.TemporaryFile(dir=probe if probe.is_dir() else probe.parent):
            pass
    except OSError as exc:
        raise FerEdgeError(f"{flag}: cannot write {target} ({exc.strerror})") from None
