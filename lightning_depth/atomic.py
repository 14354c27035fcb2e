"""The one way lightning_depth writes a file that others read: readers see the old file or the new one, never a part.

A temporary file beside the target (same directory, so the same filesystem), flushed and fsynced, then renamed over
the target, and the directory fsynced so that the rename survives a crash too. The new file gets the mode the user's
umask gives an ordinary file, so a teammate in the same group reads an ablation's files like any other (a bare
``mkstemp`` would leave them 0600). Nothing is staged in ``$TMPDIR`` or in memory: a full or foreign temporary
directory cannot fail a write, and a kill during one leaves the previous file whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

TEMP_SUFFIX = ".tmp"
_UMASK_LOCK = threading.Lock()


def _default_mode() -> int:
    return 0o666 & ~_umask()


def _umask() -> int:
    """The process's umask, read without changing it where Linux says it (``os.umask`` can only be read by setting
    it, and a second thread writing a file in between would create it with the temporary mask)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def previous_path(path: str | os.PathLike) -> Path:
    """Where :func:`atomic_file` keeps the file it replaced: ``last.ckpt`` -> ``last.previous.ckpt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.previous{path.suffix}")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, keep_previous: bool = False) -> Iterator[IO[bytes]]:
    """A binary file that replaces ``path`` atomically and durably once the ``with`` block ends without an error.

    With ``keep_previous`` the file it replaces stays beside it as :func:`previous_path`, and ``path`` itself is
    never missing: the old file is linked there before the new one is renamed over it.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _default_mode())
        if keep_previous and path.exists():
            _keep(path, previous_path(path))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Replace ``path`` with ``data`` atomically and durably."""
    with atomic_file(path) as f:
        f.write(data.encode() if isinstance(data, str) else data)
    return Path(path)


def _keep(path: Path, previous: Path) -> None:
    """``previous`` becomes ``path``'s current content, atomically; ``path`` stays in place."""
    link = previous.with_name(f".{previous.name}.{os.getpid()}{TEMP_SUFFIX}")
    try:
        link.unlink(missing_ok=True)
        os.link(path, link)
        os.replace(link, previous)
    except OSError:  # a filesystem without hard links: move it, the new file follows at once
        link.unlink(missing_ok=True)
        os.replace(path, previous)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory; the rename itself is still atomic
        pass
    finally:
        os.close(fd)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """``obj`` as indented, standard JSON (``NaN`` and ``Infinity`` are refused: other tools cannot read them)."""
    return write_atomic(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")
