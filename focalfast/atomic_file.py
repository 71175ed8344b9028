"""Replace a file so that a crash or a kill at any moment leaves the old file or the new one, whole."""

from __future__ import annotations

import os
from typing import Callable


def _fsync_path(path: str, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_atomically(path: str, write: Callable[[str], None]) -> None:
    """``write(tmp)`` writes the new contents to a temporary name; it is flushed to disk (fsync),
    renamed over ``path`` and the rename flushed too (fsync of the directory, where supported)."""
    tmp = f"{path}.tmp"
    try:
        write(tmp)
        _fsync_path(tmp, os.O_RDONLY)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    if hasattr(os, "O_DIRECTORY"):  # POSIX: make the rename itself durable
        _fsync_path(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
