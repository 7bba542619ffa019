"""The executor's children (hooks, git, the command): they share its terminal and its process
group, so a cancel signal sent to the group reaches whichever one is running, and one that
reads the terminal is in the foreground, as in an interactive shell."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import anyio


async def run_child(argv: list[str], *, env: Mapping[str, str], cwd: Path) -> int:
    """Run `argv` with the executor's own stdin/stdout/stderr; its exit status, following the
    shell's convention (128 + N when killed by signal N)."""
    process = await anyio.open_process(
        argv, stdin=None, stdout=None, stderr=None, cwd=cwd, env=dict(env)
    )
    async with process:
        # Shielded: a cancel reaches the child as a signal to the whole group; the child is
        # waited for, so its status is known.
        with anyio.CancelScope(shield=True):
            code = await process.wait()
    return 128 - code if code < 0 else code
