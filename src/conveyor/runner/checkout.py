"""The built-in checkout: the build's repository at its commit (or branch head), in the
agent's checkout directory, cleaned of everything the previous job left.

A directory that already holds a clone of the repository is reused (fetch, hard checkout,
`git clean -ffxdq`), so only the first job of a pipeline on an agent clones. A failed attempt
removes the directory and is tried again, with a growing pause.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread

from conveyor.runner.children import run_child

ATTEMPTS = 3
FIRST_PAUSE_S = 1.0

Say = Callable[[str], Awaitable[None]]


@dataclass(frozen=True)
class Source:
    repository: str
    commit: str = "HEAD"
    branch: str = ""

    @property
    def ref(self) -> str:
        """What to check out once fetched."""
        if self.commit and self.commit != "HEAD":
            return self.commit
        return f"origin/{self.branch}" if self.branch else "origin/HEAD"


async def checkout(
    source: Source,
    path: Path,
    *,
    env: Mapping[str, str],
    say: Say,
    attempts: int = ATTEMPTS,
    first_pause: float = FIRST_PAUSE_S,
) -> int:
    """0 once `path` holds `source` and nothing else; else the last git status."""
    status = 1
    for attempt in range(1, attempts + 1):
        status = await _attempt(source, path, env, say)
        if status == 0:
            return 0
        await anyio.to_thread.run_sync(functools.partial(shutil.rmtree, path, ignore_errors=True))
        if attempt < attempts:
            pause = first_pause * 2 ** (attempt - 1)
            await say(
                f"checkout failed (attempt {attempt} of {attempts}); trying again in {pause:g}s"
            )
            await anyio.sleep(pause)
    await say(f"checkout of {source.repository} failed after {attempts} attempts")
    return status


async def _attempt(source: Source, path: Path, env: Mapping[str, str], say: Say) -> int:
    # Never ask for credentials on the job's terminal: a job would wait forever.
    env = {**env, "GIT_TERMINAL_PROMPT": "0"}

    async def git(*args: str, cwd: Path = path) -> int:
        await say("$ git " + " ".join(args))
        return await run_child(["git", *args], env=env, cwd=cwd)

    if not await anyio.Path(path / ".git").is_dir():
        await anyio.to_thread.run_sync(functools.partial(shutil.rmtree, path, ignore_errors=True))
        await anyio.Path(path.parent).mkdir(parents=True, exist_ok=True)
        if status := await git("clone", "--", source.repository, str(path), cwd=path.parent):
            return status
    else:
        steps = (("remote", "set-url", "origin", source.repository), ("fetch", "--prune", "origin"))
        for args in steps:
            if status := await git(*args):
                return status
    if await git("checkout", "--force", "--quiet", source.ref):
        # A commit that no branch holds any more, or one fetched by its name only.
        if status := await git("fetch", "origin", source.ref):
            return status
        if status := await git("checkout", "--force", "--quiet", source.ref):
            return status
    return await git("clean", "-ffxdq")
