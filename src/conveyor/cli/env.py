"""`conveyor env dump / get / set / unset` and `conveyor redactor add`: the job API, from
inside a job (see `agent.jobapi`)."""

from __future__ import annotations

import json
import os
import sys

import anyio
import click

from conveyor import jobsocket
from conveyor.cli.common import friendly_errors
from conveyor.errors import ConveyorError


def _call(command: str, message: dict[str, object]) -> object:
    socket_path, token = jobsocket.from_env(os.environ, command)
    return anyio.run(jobsocket.request, socket_path, {"token": token, **message})


def _job_env(command: str) -> dict[str, str]:
    value = _call(command, {"op": "env.get"})
    if not isinstance(value, dict):
        raise ConveyorError(f"the agent answered nonsense to `{command}`")
    return {str(k): str(v) for k, v in value.items()}


@click.group()
def env() -> None:
    """The job's environment, as the hooks and commands after this one will get it.

    \b
    Inside a job:
      conveyor env set DEPLOY_TARGET=staging    post-command and pre-exit hooks see it
      conveyor env get DEPLOY_TARGET
      conveyor env unset DEPLOY_TARGET
      conveyor env dump                         every variable, as a JSON object

    A change made here applies once the hook or command that made it ends; the process
    making it keeps its own environment (as with any child process). Variables that tie the
    job to its agent and server (its token, the endpoint, the agent's paths) cannot be changed.
    """


@env.command()
@friendly_errors
def dump() -> None:
    """Print the job's environment as a JSON object."""
    click.echo(json.dumps(_job_env("conveyor env dump"), indent=2, sort_keys=True))


@env.command()
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@friendly_errors
def get(names: tuple[str, ...]) -> None:
    """Print a variable's value; with several names, NAME=value lines. Exits 1 if one is
    not set."""
    job_env = _job_env("conveyor env get")
    missing = [n for n in names if n not in job_env]
    if missing:
        raise ConveyorError(f"not set in the job's environment: {', '.join(missing)}")
    if len(names) == 1:
        click.echo(job_env[names[0]])
    else:
        for name in names:
            click.echo(f"{name}={job_env[name]}")


@env.command("set")
@click.argument("assignments", nargs=-1, required=True, metavar="NAME=VALUE...")
@friendly_errors
def set_(assignments: tuple[str, ...]) -> None:
    """Set variables for the rest of the job."""
    changes: dict[str, str] = {}
    for item in assignments:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="NAME=VALUE")
        changes[name] = value
    _call("conveyor env set", {"op": "env.set", "env": changes})


@env.command()
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@friendly_errors
def unset(names: tuple[str, ...]) -> None:
    """Remove variables for the rest of the job."""
    _call("conveyor env unset", {"op": "env.unset", "names": list(names)})


@click.group()
def redactor() -> None:
    """Secrets to keep out of the job's log."""


@redactor.command()
@click.argument("value", required=False)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["none", "json"]),
    default="none",
    show_default=True,
    help="json: the input is a JSON object, and each of its string values is redacted.",
)
@friendly_errors
def add(value: str | None, fmt: str) -> None:
    """Redact VALUE (or standard input, when no VALUE is given or it is -) from the rest of
    the job's log, in every form a job's secrets are redacted in. Values under 6 bytes are
    not redacted (a warning says so).

    \b
      vault read -field=token secret/ci | conveyor redactor add
      conveyor redactor add --format json < secrets.json
    """
    text = sys.stdin.read() if value in (None, "-") else value
    assert text is not None
    if fmt == "json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConveyorError(f"the input is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ConveyorError("the input is not a JSON object")
        values = [v for v in data.values() if isinstance(v, str)]
    else:
        values = [text.rstrip("\n")]
    for secret in values:
        if not secret.strip():
            continue
        added = _call("conveyor redactor add", {"op": "redact", "value": secret})
        if added is False:
            click.echo("conveyor: warning: a value shorter than 6 bytes is not redacted", err=True)
