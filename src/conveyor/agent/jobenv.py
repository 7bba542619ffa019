"""The environment a job's process gets on this agent.

The agent's own environment, less every variable that configures Conveyor (so neither the
registration token nor an operator's API token reaches a job), plus the server's job env,
plus what only the agent knows: its name, the checkout path, the endpoint, the job's token, and
the way to this agent process's lock service (`lockservice`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from pathlib import Path

from conveyor.agent.lockclient import SOCKET_ENV, TOKEN_ENV
from conveyor.config import (
    AgentSettings,
    ClientSettings,
    RunSettings,
    ServerSettings,
    env_var_names,
)

AGENT_ENV_PREFIXES = ("CONVEYOR_", "CONVEYOR_AGENT_")
# Every variable that configures a Conveyor command — the agent's registration token, an
# operator's API token, a config file path — stays out of jobs.
_SCRUBBED = frozenset(
    {"CONVEYOR_CONFIG", "CONVEYOR_DEBUG"}.union(
        *(
            env_var_names(model, AGENT_ENV_PREFIXES)
            for model in (AgentSettings, ServerSettings, ClientSettings, RunSettings)
        )
    )
)


# The lock service's variables for the next job: the pool owns the service and the worker builds
# the job's env, so the pool sets this in each worker's task and the worker's jobs read it there.
job_lock_env: ContextVar[Callable[[], Mapping[str, str]] | None] = ContextVar(
    "job_lock_env", default=None
)
# Likewise, how a worker hands its job's env and redactor to the job API (`jobapi`) once the
# job is about to run.
JobApiAttach = Callable[[Mapping[str, str], Callable[[str], bool], tuple[str, ...]], None]
job_api_attach: ContextVar[JobApiAttach | None] = ContextVar("job_api_attach", default=None)


def without_settings(env: Mapping[str, str]) -> dict[str, str]:
    """`env` less every variable that configures a Conveyor command."""
    return {k: v for k, v in env.items() if k not in _SCRUBBED}


def job_process_env(
    server_env: Mapping[str, str],
    *,
    agent_name: str,
    checkout_path: Path,
    endpoint: str,
    job_token: str,
    use_pty: bool,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    env = without_settings(os.environ if base is None else base)
    env.update(server_env)
    facts = {
        "CONVEYOR_AGENT_NAME": agent_name,
        "CONVEYOR_BUILD_CHECKOUT_PATH": str(checkout_path),
        "CONVEYOR_AGENT_ENDPOINT": endpoint,
        "CONVEYOR_AGENT_ACCESS_TOKEN": job_token,
        "CONVEYOR_PTY": "true" if use_pty else "false",
    }
    for name, value in list(facts.items()):
        facts["BUILDKITE_" + name.removeprefix("CONVEYOR_")] = value
    env.update(facts)
    # The agent's own say, never the server's or the agent's environment (an agent started
    # inside a job inherits that job's): only this agent's service can serve this job.
    env.pop(SOCKET_ENV, None)
    env.pop(TOKEN_ENV, None)
    lock_env = job_lock_env.get()
    if lock_env is not None:
        env.update(lock_env())
    if use_pty:
        # The job talks to the terminal we made, whatever the agent itself was started in.
        env["TERM"] = "xterm-256color"
    return env
