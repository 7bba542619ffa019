"""`conveyor step get / update`, from inside a job."""

from __future__ import annotations

import click

from conveyor import protocol as p
from conveyor.cli.common import friendly_errors
from conveyor.cli.injob import run_in_job
from conveyor.errors import ConveyorError

_ATTRIBUTES = ("id", "key", "kind", "label", "state")
_STEP_HELP = "The step's key (or id).  [default: this job's step]"


@click.group()
def step() -> None:
    """Read and change steps of the job's build. For use in a job's command."""


@step.command("get")
@click.argument("attribute", type=click.Choice(_ATTRIBUTES))
@click.option("--step", "key", help=_STEP_HELP)
@friendly_errors
def get(attribute: str, key: str | None) -> None:
    """Print one ATTRIBUTE of a step (an empty line when it has none, e.g. no key)."""
    info = run_in_job("conveyor step get", lambda job: job.get_step(key))
    click.echo(getattr(info, attribute) or "")


@step.command("update")
@click.argument("attribute", type=click.Choice(["label"]))
@click.argument("value")
@click.option("--step", "key", help=_STEP_HELP)
@friendly_errors
def update(attribute: str, value: str, key: str | None) -> None:
    """Change a step's ATTRIBUTE (only `label`) to VALUE.

    \b
      conveyor step update label ":rocket: Deployed $VERSION"
    """
    if not value.strip() or len(value) > 500:
        raise ConveyorError("a label must be 1 to 500 characters, not only spaces")
    change = p.StepUpdate(attribute="label", value=value)
    info = run_in_job("conveyor step update", lambda job: job.update_step(key, change))
    click.echo(f"step {info.key or info.id}: {attribute} is now {value!r}", err=True)
