"""How the agent starts a job: through the job executor (`conveyor bootstrap`, see
`runner.bootstrap`), or — when the executor would have nothing to do but run the command — by
running the command itself.

The executor runs hooks, fetches plugins, checks the repository out and uploads artifacts. A
job with none of those (no hook file in the agent's hooks directory or the working directory's
`.conveyor/hooks`/`.buildkite/hooks`, no plugins, no repository, no artifact paths) gets the
same environment and the same result from its command run directly, without the cost of
starting the executor (a Python process, tens of milliseconds, on every job's critical path).
"""

from __future__ import annotations

import functools
import json
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread

from conveyor.agent.hooks import find_hook, run_hook
from conveyor.runner.hooks import PHASES, REPOSITORY_HOOK_DIRS

if TYPE_CHECKING:
    from conveyor.agent.worker import WorkerOptions

EXECUTOR = (sys.executable, "-m", "conveyor.runner")
PRE_BOOTSTRAP = "pre-bootstrap"


async def pre_bootstrap(opts: WorkerOptions, job_id: str, server_env: Mapping[str, str]) -> int:
    """Run the agent's `pre-bootstrap` hook, if it has one, for a job about to start: it sees
    the job's id and, in the JSON file named by CONVEYOR_JOB_ENV_FILE, the env the server gave
    the job — before any of it runs. Its status (0 when there is no hook): non-zero refuses
    the job."""
    hook = await find_hook(opts.hooks_path, PRE_BOOTSTRAP)
    if hook is None:
        return 0
    tmp = await anyio.to_thread.run_sync(functools.partial(tempfile.mkdtemp, prefix="conveyor-"))
    try:
        env_file = anyio.Path(tmp) / "job-env.json"
        await env_file.write_text(json.dumps(dict(server_env)))
        facts = {"CONVEYOR_JOB_ID": job_id, "CONVEYOR_JOB_ENV_FILE": str(env_file)}
        facts |= {"BUILDKITE_JOB_ID": job_id, "BUILDKITE_ENV_JSON_FILE": str(env_file)}
        # Not the agent's environment (its registration token may be in it): the facts only.
        return await run_hook(hook, env=facts, inherit=False)
    finally:
        await anyio.to_thread.run_sync(functools.partial(shutil.rmtree, tmp, ignore_errors=True))


def executor_env(opts: WorkerOptions) -> dict[str, str]:
    """What the executor reads from its environment, besides the server's job env."""
    env = {
        "CONVEYOR_SHELL": opts.shell,
        "CONVEYOR_BUILD_PATH": str(opts.build_path),
        "CONVEYOR_HOOKS_PATH": str(opts.hooks_path or ""),
        "CONVEYOR_PLUGINS_PATH": str(opts.plugins_path),
        "CONVEYOR_PLUGINS_ENABLED": "true" if opts.plugins_enabled else "false",
        "CONVEYOR_ALLOWED_PLUGINS": opts.allowed_plugins,
        "CONVEYOR_LOCAL_HOOKS_ENABLED": "true" if opts.local_hooks_enabled else "false",
        "CONVEYOR_CANCEL_GRACE_PERIOD": str(opts.cancel_grace),
        "CONVEYOR_REDACTED_VARS": ",".join(opts.redacted_vars),
        "CONVEYOR_GIT_MIRRORS_PATH": str(opts.git_mirrors_path or ""),
        "CONVEYOR_GIT_MIRRORS_LOCK_TIMEOUT": str(opts.git_mirrors_lock_timeout),
    }
    for name in ("SHELL", "BUILD_PATH", "HOOKS_PATH", "PLUGINS_PATH", "PLUGINS_ENABLED"):
        env[f"BUILDKITE_{name}"] = env[f"CONVEYOR_{name}"]
    # The shell's own $SHELL is the user's login shell, not ours: keep it.
    del env["BUILDKITE_SHELL"]
    return env


def _has_work(opts: WorkerOptions, env: Mapping[str, str], workdir: Path) -> bool:
    if env.get("CONVEYOR_REPO") or env.get("CONVEYOR_ARTIFACT_PATHS"):
        return True
    if env.get("CONVEYOR_PLUGINS", "[]") not in ("", "[]"):
        return True
    dirs = [workdir / d for d in REPOSITORY_HOOK_DIRS]
    if opts.hooks_path is not None:
        dirs.append(opts.hooks_path)
    # One look per directory when it is not there (the common case), not one per phase.
    return any((d / phase).is_file() for d in dirs if d.is_dir() for phase in PHASES)


async def executor_argv(
    opts: WorkerOptions, env: Mapping[str, str], workdir: Path
) -> tuple[str, ...]:
    """The executor's command line, or () when the command is run directly."""
    if await anyio.to_thread.run_sync(_has_work, opts, env, workdir):
        return EXECUTOR
    return ()
