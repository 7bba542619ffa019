"""What the commands used inside a job share: finding the job they run in, and calling the
server with the job's own token.

The agent gives each job the endpoint, the job's token and its id (CONVEYOR_AGENT_ENDPOINT,
CONVEYOR_AGENT_ACCESS_TOKEN, CONVEYOR_JOB_ID, or their BUILDKITE_ names).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, TypeVar

import anyio

from conveyor.errors import ConveyorError, JobGoneError, outside_job

if TYPE_CHECKING:
    from conveyor.client import JobClient

T = TypeVar("T")

_WANTED = {
    "CONVEYOR_AGENT_ENDPOINT": ("CONVEYOR_AGENT_ENDPOINT", "BUILDKITE_AGENT_ENDPOINT"),
    "CONVEYOR_AGENT_ACCESS_TOKEN": ("CONVEYOR_AGENT_ACCESS_TOKEN", "BUILDKITE_AGENT_ACCESS_TOKEN"),
    "CONVEYOR_JOB_ID": ("CONVEYOR_JOB_ID", "BUILDKITE_JOB_ID"),
}


def job_context(env: Mapping[str, str], command: str, hint: str = "") -> tuple[str, str, str]:
    """(endpoint, job token, job id) of the job this runs in, or a clear error outside one.
    `command` names the command in that error; `hint` is added to it."""
    found = {
        name: next((env[n] for n in names if env.get(n)), None) for name, names in _WANTED.items()
    }
    missing = [name for name, value in found.items() if value is None]
    if missing:
        raise outside_job(command, "a job", missing, hint)
    return (
        found["CONVEYOR_AGENT_ENDPOINT"] or "",
        found["CONVEYOR_AGENT_ACCESS_TOKEN"] or "",
        found["CONVEYOR_JOB_ID"] or "",
    )


def run_in_job(command: str, call: Callable[[JobClient], Awaitable[T]], hint: str = "") -> T:
    """Run `call` with a client for the job this process runs in."""
    endpoint, token, job_id = job_context(os.environ, command, hint)

    async def main() -> T:
        import httpx

        from conveyor.client import JobClient, new_http_client

        async with new_http_client(endpoint) as http:
            try:
                return await call(JobClient(http, token, job_id))
            except httpx.TransportError as exc:
                # Only once the call's retries are used up.
                raise ConveyorError(
                    f"cannot reach the server at {endpoint}: {exc or type(exc).__name__}"
                ) from None
            except JobGoneError as exc:
                raise ConveyorError(
                    f"the server refused this job's token ({exc}): the job has finished, "
                    "or this is not the job the token belongs to"
                ) from None

    return anyio.run(main)
