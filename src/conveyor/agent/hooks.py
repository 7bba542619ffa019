"""Agent-level hooks: `agent-startup` and `agent-shutdown` in the hooks dir, and the
`--shutdown-hook` program, which is told why the agent stops.

A hook is any executable file. Its output goes to the agent's log; it gets the agent's
environment plus `CONVEYOR_AGENT_NAMES` / `CONVEYOR_AGENT_IDS` (comma-separated, one per worker)
and, for shutdown hooks, `CONVEYOR_AGENT_SHUTDOWN_REASON` (also its first argument).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import anyio
import anyio.to_thread

log = logging.getLogger("conveyor.agent")

HOOK_TIMEOUT_S = 60.0

# Why an agent stops, as told to shutdown hooks.
REASONS = (
    "idle",
    "job-finished",
    "requested",
    "interrupted",
    "unable-to-reach-server",
    "uptime",
)


async def find_hook(hooks_path: Path | None, name: str) -> Path | None:
    if hooks_path is None:
        return None
    path = hooks_path / name
    return path if await anyio.Path(path).is_file() else None


async def run_hook(
    path: Path, *, env: dict[str, str], args: list[str] | None = None, inherit: bool = True
) -> int:
    """Run one hook to its end (at most HOOK_TIMEOUT_S); returns its exit status. Without
    `inherit`, it gets `env` and PATH/HOME only, not the agent's environment."""
    if not await anyio.to_thread.run_sync(os.access, path, os.X_OK):
        log.error("hook %s is not executable", path)
        return 126
    with anyio.move_on_after(HOOK_TIMEOUT_S) as scope:
        done = await anyio.run_process(
            [str(path), *(args or [])],
            env={**(os.environ if inherit else _minimal()), **env},
            check=False,
        )
    if scope.cancelled_caught:
        log.error("hook %s did not finish within %ss", path, HOOK_TIMEOUT_S)
        return 124
    for stream in (done.stdout, done.stderr):
        for line in stream.decode("utf-8", "replace").splitlines():
            log.info("%s: %s", path.name, line)
    if done.returncode != 0:
        log.error("hook %s exited with %s", path, done.returncode)
    return done.returncode


def _minimal() -> dict[str, str]:
    return {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
