"""The one way lightning_depth writes a file that others read: readers see the old file or the new one, never a part.

A temporary file beside the target (same directory, so the same filesystem), flushed and fsynced, then renamed over
the target. The new file gets the mode the user's umask gives an ordinary file, so a teammate in the same group reads
an ablation's files like any other (a bare ``mkstemp`` would leave them 0600).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def _default_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Replace ``path`` with ``data`` atomically and durably."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """``obj`` as indented, standard JSON (``NaN`` and ``Infinity`` are refused: other tools cannot read them)."""
    return write_atomic(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")
