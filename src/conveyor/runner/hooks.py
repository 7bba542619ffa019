"""Job hooks: where they are found, and running one so that what it exports carries forward.

A hook is a file named for its phase (`environment`, `pre-command`, ...) in one of three
scopes: the agent's hooks directories, the repository's `.conveyor/hooks/` (or
`.buildkite/hooks/`, for pipelines brought from Buildkite), and each plugin's `hooks/`.

A shell hook (no `#!` line, or one naming a shell) is *sourced* by the job's shell inside a
small wrapper, which then dumps the environment and working directory it ended with; the
executor applies the differences to every later phase. A hook that fails leaves nothing behind:
its dump is never written. Variables that tie the job to its agent and server (`PROTECTED`)
cannot be changed by a hook. Any other executable (a Python script, a binary) is run as a
program: it cannot change the job's environment.
"""

from __future__ import annotations

import os
import shlex
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import anyio

from conveyor.runner.children import run_child

PHASES = (
    "environment",
    "pre-checkout",
    "checkout",
    "post-checkout",
    "pre-command",
    "command",
    "post-command",
    "pre-artifact",
    "post-artifact",
    "pre-exit",
)

REPOSITORY_HOOK_DIRS = (Path(".conveyor/hooks"), Path(".buildkite/hooks"))

# What hooks may not change: the job's identity, its credentials, and where the executor
# finds its own parts. A change is dropped with a warning in the log.
PROTECTED = frozenset(
    name
    for suffix in (
        "AGENT_ACCESS_TOKEN",
        "AGENT_ENDPOINT",
        "AGENT_NAME",
        "AGENT_ID",
        "JOB_ID",
        "BUILD_PATH",
        "HOOKS_PATH",
        "PLUGINS_PATH",
        "PLUGINS_ENABLED",
        "LOCAL_HOOKS_ENABLED",
        "SHELL",
        "REDACTED_VARS",
        "LOCKS_SOCKET",
        "LOCKS_TOKEN",
        "GIT_MIRRORS_PATH",
    )
    for name in (f"CONVEYOR_{suffix}", f"BUILDKITE_{suffix}")
)

_SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh"})
# The wrapper's own variables and those every shell sets for itself: not the hook's doing.
_SHELL_OWN = frozenset({"_", "SHLVL", "PWD", "OLDPWD", "__CONVEYOR_HOOK_OUT"})

# Sourced with `set -e` (the default shell's `-e`): the first failing command ends the hook.
# The dump happens only when the hook succeeded: after it, or at an `exit 0` inside it (the
# EXIT trap, unless the hook set one of its own: then its changes are not carried forward).
_WRAPPER = """\
__conveyor_dump() {{ env -0 > "$__CONVEYOR_HOOK_OUT.env"; pwd > "$__CONVEYOR_HOOK_OUT.pwd"; }}
trap '__s=$?; if [ "$__s" -eq 0 ] && [ ! -e "$__CONVEYOR_HOOK_OUT.env" ]; then \
__conveyor_dump; fi' EXIT
. {hook}
__conveyor_dump
"""


@dataclass(frozen=True)
class Hook:
    phase: str
    path: Path
    scope: str  # "agent", "repository" or "plugin <name>"

    def describe(self) -> str:
        return f"{self.scope} {self.phase} hook ({self.path})"


@dataclass(frozen=True)
class HookResult:
    status: int
    env: dict[str, str]
    cwd: Path
    dropped: tuple[str, ...] = ()
    """Protected variables the hook tried to change."""


def find(directory: Path, phase: str, scope: str, *, confine: Path | None = None) -> Hook | None:
    """The hook for `phase` in `directory`; with `confine`, only if the file really is there
    (not a symlink to somewhere outside it)."""
    path = directory / phase
    if not path.is_file():
        return None
    if confine is not None and not path.resolve().is_relative_to(confine.resolve()):
        return None
    return Hook(phase, path, scope)


def repository_hook_dirs(checkout: Path) -> list[Path]:
    """The repository's hook directories that exist and stay inside the checkout (a symlink
    out of it is refused: hooks run with the agent's rights)."""
    found = []
    root = checkout.resolve()
    for rel in REPOSITORY_HOOK_DIRS:
        path = checkout / rel
        if path.is_dir() and path.resolve().is_relative_to(root):
            found.append(path)
    return found


def is_shell_script(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            head = f.read(512)
    except OSError:
        return True
    if not head.startswith(b"#!"):
        # A compiled program (ELF, or any binary) is run, not sourced.
        return not (head.startswith(b"\x7fELF") or b"\0" in head)
    first = head.split(b"\n", 1)[0]
    words = first[2:].decode("utf-8", "replace").split()
    if not words:
        return True
    program = Path(words[0]).name
    if program == "env" and len(words) > 1:
        program = Path(words[1]).name
    return program in _SHELLS


async def run_hook(
    hook: Hook,
    *,
    shell: str,
    env: Mapping[str, str],
    cwd: Path,
) -> HookResult:
    """Run `hook` to its end; the returned env and cwd are what later phases get."""
    if not is_shell_script(hook.path):
        if not os.access(hook.path, os.X_OK):
            raise PermissionError(f"{hook.path} has a #! line but is not executable")
        status = await run_child([str(hook.path)], env=env, cwd=cwd)
        return HookResult(status, dict(env), cwd)
    with tempfile.TemporaryDirectory(prefix="conveyor-hook-") as tmp:
        out = Path(tmp) / "dump"
        script = _WRAPPER.format(hook=shlex.quote(str(hook.path)))
        status = await run_child(
            [*shlex.split(shell), script],
            env={**env, "__CONVEYOR_HOOK_OUT": str(out)},
            cwd=cwd,
        )
        env_file, pwd_file = anyio.Path(f"{out}.env"), anyio.Path(f"{out}.pwd")
        if status != 0 or not await env_file.exists() or not await pwd_file.exists():
            # Failed: its changes are dropped. Passed without a dump (its own EXIT trap
            # replaced ours and it ended with `exit 0`): it changed nothing we can see.
            return HookResult(status, dict(env), cwd)
        after = _parse_env(await env_file.read_bytes())
        new_cwd = Path((await pwd_file.read_text()).rstrip("\n"))
    return _apply(env, after, status, new_cwd)


def _parse_env(dump: bytes) -> dict[str, str]:
    env = {}
    for entry in dump.split(b"\0"):
        name, sep, value = entry.partition(b"=")
        if sep and name:
            env[name.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
    return env


def _apply(before: Mapping[str, str], after: dict[str, str], status: int, cwd: Path) -> HookResult:
    env = dict(before)
    dropped: list[str] = []
    for name in set(before) | set(after):
        if name in _SHELL_OWN:
            continue
        old, new = before.get(name), after.get(name)
        if old == new:
            continue
        if name in PROTECTED:
            dropped.append(name)
        elif new is None:
            del env[name]
        else:
            env[name] = new
    return HookResult(status, env, cwd, tuple(sorted(dropped)))
