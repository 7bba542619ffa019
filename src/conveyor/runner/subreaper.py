"""The executor as a child subreaper: every process a job starts stays below it, even one
that double-forks into a session of its own, so the job's processes can all be found (in
/proc, by parent) and stopped — at a cancel, and at the job's end.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from collections.abc import Awaitable, Callable

import anyio
import anyio.to_thread

from conveyor.runner.process import descendants

Say = Callable[[str], Awaitable[None]]

_PR_SET_CHILD_SUBREAPER = 36
# Leftovers get this long between SIGTERM and SIGKILL once the job is over.
LEFTOVER_GRACE_S = 2.0


def become_subreaper() -> bool:
    """Orphans of this process's descendants come to it (Linux); False where not supported."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
        prctl.restype = ctypes.c_int
        prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        return bool(prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


async def stop_leftovers(say: Say) -> None:
    """Stop every process the job left running (SIGTERM, then SIGKILL after a grace)."""
    me = os.getpid()
    left = await anyio.to_thread.run_sync(descendants, {me})
    if not left:
        return
    await say(f"stopping {len(left)} process(es) the job left running")
    _signal_all(left, signal.SIGTERM)
    with anyio.move_on_after(LEFTOVER_GRACE_S):
        await _wait_gone(left)
    _signal_all(await anyio.to_thread.run_sync(descendants, {me}), signal.SIGKILL)
    _reap()


def _signal_all(pids: set[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


async def _wait_gone(pids: set[int]) -> None:
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            await anyio.wait_readable(fd)  # readable once the process has exited
        finally:
            os.close(fd)


def _reap() -> None:
    """Collect exited orphans: they are this subreaper's children now."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] != 0:
            pass


async def kill_descendants() -> None:
    """SIGKILL for every process below this one, at once."""
    _signal_all(await anyio.to_thread.run_sync(descendants, {os.getpid()}), signal.SIGKILL)
