"""`conveyor lock acquire / release / get / do / done`: locks shared by the jobs of one host."""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import anyio
import click

from conveyor.cli.common import friendly_errors

if TYPE_CHECKING:
    from conveyor.agent.lockclient import LockClient

T = TypeVar("T")

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def parse_duration(ctx: click.Context, param: click.Parameter, value: str) -> float:
    """`90`, `90s`, `1m30s`, `1.5h`, `250ms` → seconds."""
    text = value.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    parts = _DURATION.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise click.BadParameter(
            f"{value!r} is not a duration such as 30s, 5m, 1h30m or 250ms", ctx, param
        )
    return sum(float(number) * _UNITS[unit] for number, unit in parts)


wait_timeout_option = click.option(
    "--lock-wait-timeout",
    "timeout",
    metavar="DURATION",
    default="0",
    callback=parse_duration,
    help="Give up (exit 1) after waiting this long, e.g. 30s, 5m, 1h30m; 0 waits as long as it "
    "takes.  [default: 0]",
)


def _with_client(command: str, call: Callable[[LockClient], Awaitable[T]]) -> T:
    from conveyor.agent.lockclient import LockClient

    client = LockClient.from_env(os.environ, command)
    return anyio.run(call, client)


@click.group()
def lock() -> None:
    """Locks shared by every job of the agents on this machine.

    A key names one lock; the jobs of every agent process of this user on this machine that
    use the same key exclude each other. Only a job can use them: the agent gives each job
    the way to its lock service (no server round trip). A lock a job still holds when it ends
    is released then.

    \b
    Mutual exclusion:
      token=$(conveyor lock acquire deploy-cache)
      ...                                 # one job at a time here
      conveyor lock release deploy-cache "$token"

    \b
    Work done once (the first caller does it; the others wait for it, then skip it):
      if [ "$(conveyor lock do install-toolchain)" = do ]; then
        ./install-toolchain.sh
        conveyor lock done install-toolchain
      fi
    """


@lock.command()
@click.argument("key")
@wait_timeout_option
@friendly_errors
def acquire(key: str, timeout: float) -> None:
    """Wait until lock KEY is free, take it, and print the token that releases it.

    The lock is this job's until `conveyor lock release KEY TOKEN`, or until the job ends.
    A job that takes a lock it already holds waits for itself: release it first.
    """
    token = _with_client(
        "conveyor lock acquire", lambda client: client.acquire(key, timeout or None)
    )
    click.echo(token)


@lock.command()
@click.argument("key")
@click.argument("token")
@friendly_errors
def release(key: str, token: str) -> None:
    """Release lock KEY, taken with `conveyor lock acquire`, which printed TOKEN."""
    _with_client("conveyor lock release", lambda client: client.release(key, token))


@lock.command()
@click.argument("key")
@friendly_errors
def get(key: str) -> None:
    """Print the value of lock KEY: empty when free, the holder's token, `doing` while its
    `do` work is in progress, or `done`."""
    click.echo(_with_client("conveyor lock get", lambda client: client.get(key)))


@lock.command("do")
@click.argument("key")
@wait_timeout_option
@friendly_errors
def do_(key: str, timeout: float) -> None:
    """Start work that is done once per machine: print `do` or `done`.

    `do`: this job does the work now, then calls `conveyor lock done KEY`; until then every
    other caller waits. `done`: the work was done (after waiting for the job doing it, if
    one was), so skip it. If the job doing the work ends without `done`, the work counts as
    not done and the next caller is told `do`. `done` lasts as long as the agents on this
    machine run.
    """
    click.echo(_with_client("conveyor lock do", lambda client: client.do(key, timeout or None)))


@lock.command()
@click.argument("key")
@friendly_errors
def done(key: str) -> None:
    """Mark the work of KEY done, after `conveyor lock do KEY` printed `do` in this job."""
    _with_client("conveyor lock done", lambda client: client.done(key))
