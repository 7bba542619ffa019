"""An exclusive lock on a file, shared by every job of the host (a plugin being fetched, a git
mirror being updated): `flock`, so it goes when its holder exits, however it exits."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


def lock_file(path: Path) -> int:
    """Wait for the lock on `path` (made if missing); the descriptor that holds it, to
    `os.close` when done. Blocking: call it in a thread."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        raise
    return fd
