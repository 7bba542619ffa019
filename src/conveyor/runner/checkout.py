"""The built-in checkout: the build's repository at its commit (or branch head), in the
agent's checkout directory, cleaned of everything the previous job left.

A directory that already holds a clone of the repository is reused (fetch, hard checkout,
`git clean -ffxdq`), so only the first job of a pipeline on an agent clones. A failed attempt
removes the directory and is tried again, with a growing pause.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread

from conveyor.runner.children import run_child
from conveyor.runner.filelock import lock_file
from conveyor.runner.plugins import without_credentials

ATTEMPTS = 3
FIRST_PAUSE_S = 1.0
MIRROR_LOCK_TIMEOUT_EXIT = 94
"""The job's exit status when the git mirror stayed locked for the whole lock timeout."""

Say = Callable[[str], Awaitable[None]]


@dataclass(frozen=True)
class Mirrors:
    """Bare mirrors of repositories, shared by every job of the host: a clone borrows their
    objects (`git clone --reference`), so each repository is fetched from its remote once per
    job instead of cloned. One job updates a mirror at a time (a flock)."""

    path: Path
    lock_timeout: float = 300.0

    def mirror_of(self, repository: str) -> Path:
        name = without_credentials(repository)
        return self.path / re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")


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
    mirrors: Mirrors | None = None,
) -> int:
    """0 once `path` holds `source` and nothing else; else the last git status
    (`MIRROR_LOCK_TIMEOUT_EXIT` when the mirror stayed locked: not retried)."""
    reference: Path | None = None
    if mirrors is not None:
        mirror = await _update_mirror(source, mirrors, env, say)
        if mirror == MIRROR_LOCK_TIMEOUT_EXIT:
            return MIRROR_LOCK_TIMEOUT_EXIT
        if isinstance(mirror, Path):
            reference = mirror
    status = 1
    for attempt in range(1, attempts + 1):
        # A cancel arrives as a cancellation of this task (the executor's phases scope).
        status = await _attempt(source, path, env, say, reference)
        if status == 0:
            return 0
        await anyio.to_thread.run_sync(functools.partial(shutil.rmtree, path, ignore_errors=True))
        if attempt < attempts:
            pause = first_pause * 2 ** (attempt - 1)
            await say(
                f"checkout failed (attempt {attempt} of {attempts}); trying again in {pause:g}s"
            )
            await anyio.sleep(pause)
    await say(
        f"checkout of {without_credentials(source.repository)} failed after {attempts} attempts"
    )
    return status


async def _update_mirror(
    source: Source, mirrors: Mirrors, env: Mapping[str, str], say: Say
) -> Path | int | None:
    """The repository's mirror, up to date; the lock-timeout status; or None when the mirror
    could not be made (the checkout goes on without it)."""
    mirror = mirrors.mirror_of(source.repository)
    await anyio.Path(mirrors.path).mkdir(parents=True, exist_ok=True)
    lock_path = mirror.with_name(mirror.name + ".lock")
    await say(f"waiting for the git mirror lock {lock_path}")
    try:
        with anyio.fail_after(mirrors.lock_timeout):
            # A blocking flock in a thread: given up at the deadline, the thread stays blocked
            # until this process (the executor) exits, which follows soon after.
            lock = await anyio.to_thread.run_sync(lock_file, lock_path, abandon_on_cancel=True)
    except TimeoutError:
        await say(f"the git mirror {mirror} stayed locked for {mirrors.lock_timeout:g}s")
        return MIRROR_LOCK_TIMEOUT_EXIT
    git_env = {**env, "GIT_TERMINAL_PROMPT": "0"}
    try:
        if await anyio.Path(mirror / "HEAD").is_file():
            args = ["git", "--git-dir", str(mirror), "remote", "update", "--prune"]
        else:
            args = ["git", "clone", "--mirror", "--quiet", "--", source.repository, str(mirror)]
        await say("$ " + " ".join(without_credentials(a) for a in args))
        if await run_child(args, env=git_env, cwd=mirrors.path):
            await say("updating the git mirror failed; checking out without it")
            return None
        return mirror
    finally:
        await anyio.to_thread.run_sync(os.close, lock)


async def _attempt(
    source: Source, path: Path, env: Mapping[str, str], say: Say, reference: Path | None
) -> int:
    # Never ask for credentials on the job's terminal: a job would wait forever.
    env = {**env, "GIT_TERMINAL_PROMPT": "0"}

    async def git(*args: str, cwd: Path = path) -> int:
        await say("$ git " + " ".join(without_credentials(a) for a in args))
        return await run_child(["git", *args], env=env, cwd=cwd)

    if not await anyio.Path(path / ".git").is_dir():
        await anyio.to_thread.run_sync(functools.partial(shutil.rmtree, path, ignore_errors=True))
        await anyio.Path(path.parent).mkdir(parents=True, exist_ok=True)
        borrow = ["--reference", str(reference)] if reference is not None else []
        clone = ("clone", *borrow, "--", source.repository, str(path))
        if status := await git(*clone, cwd=path.parent):
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
