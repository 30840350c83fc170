"""Write artifacts atomically: into a temporary file beside the target, then rename over it.

`check_writable` is the one up-front check of an output path, run before the expensive work
(a conversion, a video) so that an unwritable path fails in a second, not at the end.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from fer_edge.errors import FerEdgeError


@contextlib.contextmanager
def atomic_path(target: str | Path):
    """Yield a temporary path in the target's folder; rename it onto `target` only on success.

    The temporary file is removed on any exception, including the SystemExit the CLI raises on
    SIGTERM (see `fer_edge.cli`), so an interrupted command leaves neither a half-written target
    nor a hidden temporary file.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + target.suffix, dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts get the usual permissions
        try:
            os.replace(tmp, target)
        except OSError as error:  # e.g. an immutable file of that name, which no up-front probe can tell
            raise FerEdgeError(f"{target}: cannot replace it ({error.strerror}); nothing was written") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(target: str | Path, option: str, folder: bool = False) -> Path:
    """Raise FerEdgeError naming `option` unless `target` (a file, or a folder when `folder`) can be
    written: its parent folders exist or can be created, and the deepest existing one accepts files.

    The check creates and removes a probe file instead of asking `os.access`, which answers yes to
    root on read-only folders and knows nothing of read-only file systems. Nothing is left behind.
    """
    target = Path(target)
    if target.is_dir() != folder and target.exists():
        raise FerEdgeError(f"{option} {target}: is a {'file' if folder else 'folder'}, expected a "
                           f"{'folder' if folder else 'file'} path")
    if not folder and target.exists() and not target.is_file():
        # The rename in atomic_path replaces the node itself (a fifo given to `demo --out` became a
        # regular file): run as root, `--out /dev/null` would swap the system's /dev/null for one.
        raise FerEdgeError(f"{option} {target}: is a device or fifo, not a regular file; give a file path")
    existing = target if folder and target.is_dir() else target.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise FerEdgeError(f"{option} {target}: cannot create it, {existing} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".fer-edge-write-check.", dir=existing)
    except OSError as error:
        raise FerEdgeError(f"{option} {target}: cannot write into {existing} ({error.strerror})") from None
    os.close(fd)
    os.unlink(probe)
    return target


def write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_json(target: str | Path, obj) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=False) + "\n")

