"""`conveyor build create / show / cancel / unblock`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
import click

from conveyor import protocol as p
from conveyor.cli.client_options import client_options
from conveyor.cli.common import friendly_errors, given, read_pipeline_text, settings
from conveyor.cli.injob import run_in_job
from conveyor.config import ClientSettings
from conveyor.errors import ConveyorError
from conveyor.report import BuildReporter, describe, describe_step

_SLUG_HELP = "The pipeline's slug (created on first use).  [default: default]"


@click.group()
def build() -> None:
    """Create, inspect, cancel and unblock builds."""


def key_values(option: str, pairs: tuple[str, ...]) -> dict[str, list[str]]:
    """KEY=VALUE pairs of a repeatable option; a key given twice collects both values."""
    values: dict[str, list[str]] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConveyorError(f"{option} {pair!r} is not KEY=VALUE")
        values.setdefault(key, []).append(value)
    return values


def env_pairs(pairs: tuple[str, ...]) -> dict[str, str]:
    """--env KEY=VALUE pairs; the last value of a key given twice wins."""
    return {k: v[-1] for k, v in key_values("--env", pairs).items()}


@build.command()
@click.option(
    "--pipeline-file",
    "-f",
    type=click.Path(path_type=Path, dir_okay=False, exists=True, allow_dash=True),
    help="The pipeline YAML to run; `-` reads standard input. Without it the build runs the "
    "pipeline's stored steps (`conveyor pipeline set SLUG --steps FILE`).",
)
@click.option("--pipeline", "slug", default="default", show_default=True, help=_SLUG_HELP)
@click.option("--branch", help="The branch to build.  [default: the pipeline's default branch]")
@click.option("--commit", default="HEAD", show_default=True)
@click.option("--message", "-m", default="", help="The build message.")
@click.option(
    "--env", "-e", multiple=True, help="KEY=VALUE for every job of the build (repeatable)."
)
@click.option("--wait", is_flag=True, help="Follow the build and exit 0 if it passed, 1 if not.")
@client_options
@friendly_errors
def create(
    pipeline_file: Path | None,
    slug: str,
    branch: str | None,
    commit: str,
    message: str,
    env: tuple[str, ...],
    wait: bool,
    config_file: Path | None,
    **flags: object,
) -> None:
    """Create a build and print its number.

    The build runs the pipeline file given, or else the steps stored for the pipeline.
    """
    cfg = settings(ClientSettings, given(**flags), config_file)
    fields: dict[str, object] = {"commit": commit, "message": message, "env": env_pairs(env)}
    if pipeline_file is not None:
        fields["pipeline"] = read_pipeline_text(pipeline_file)
        if not fields["pipeline"]:
            raise ConveyorError(f"{pipeline_file} is empty: there is no pipeline to run")
        fields["filename"] = "<stdin>" if str(pipeline_file) == "-" else str(pipeline_file)
    if branch is not None:
        fields["branch"] = branch
    # Only what was given is sent: the server fills in the rest (e.g. the default branch).
    body = p.CreateBuildRequest.model_validate(fields)

    async def main() -> int:
        from conveyor.api_client import ApiClient

        async with ApiClient.connect(cfg.endpoint, cfg.api_token) as api:
            created = await api.create_build(slug, body)
            for warning in created.warnings:
                click.echo(f"warning: {warning}", err=True)
            click.echo(f"Build {created.pipeline}#{created.number} created ({created.id})")
            if not wait:
                return 0
            reporter = BuildReporter()
            last = created
            async for last in api.follow_build(slug, created.number):
                reporter.update(last)
            reporter.summary(last)
            return 0 if last.state == p.BuildState.PASSED else 1

    sys.exit(anyio.run(main))


@build.command()
@click.argument("number", type=int, required=False)
@click.option("--pipeline", "slug", default="default", show_default=True, help=_SLUG_HELP)
@client_options
@friendly_errors
def cancel(number: int | None, slug: str, config_file: Path | None, **flags: object) -> None:
    """Cancel build NUMBER; without NUMBER, inside a job: cancel the job's own build.

    Jobs not yet running are canceled; running ones are stopped by their agents and finish as
    canceled; nothing more is scheduled. A build that has ended is left as it is. Inside a job,
    the job's own token is used (and the job itself is stopped too).
    """
    if number is None:
        if not os.environ.get("CONVEYOR_JOB_ID") and not os.environ.get("BUILDKITE_JOB_ID"):
            raise ConveyorError("give the build NUMBER (only inside a job may it be left out)")
        run_in_job("conveyor build cancel", lambda job: job.cancel_build())
        click.echo("canceling this job's build", err=True)
        return
    cfg = settings(ClientSettings, given(**flags), config_file)

    async def main() -> p.BuildOut:
        from conveyor.api_client import ApiClient

        async with ApiClient.connect(cfg.endpoint, cfg.api_token) as api:
            return await api.cancel_build(slug, number)

    b = anyio.run(main)
    click.echo(f"Build {b.pipeline}#{b.number}: {b.state.value}")


@build.command()
@click.argument("number", type=int)
@click.option("--pipeline", "slug", default="default", show_default=True, help=_SLUG_HELP)
@client_options
@friendly_errors
def show(number: int, slug: str, config_file: Path | None, **flags: object) -> None:
    """Show a build: its state, its steps (with how to unblock a blocked one) and its jobs."""
    cfg = settings(ClientSettings, given(**flags), config_file)

    async def main() -> None:
        from conveyor.api_client import ApiClient

        async with ApiClient.connect(cfg.endpoint, cfg.api_token) as api:
            b = await api.get_build(slug, number)
            notes = await api.annotations(slug, number)
        click.echo(f"Build {b.pipeline}#{b.number}: {b.state.value}")
        click.echo(
            f"  branch {b.branch}  commit {b.commit}  created {b.created_at:%Y-%m-%d %H:%M:%S}Z"
        )
        if b.message:
            click.echo(f"  {b.message}")
        for key, value in sorted(b.meta_data.items()):
            click.echo(f"  meta-data {key}={value}")
        if b.steps:
            click.echo("Steps:")
            for s in b.steps:
                click.echo(f"  {describe_step(b, s)}")
        if b.jobs:
            click.echo("Jobs:")
        for j in b.jobs:
            click.echo(f"  {describe(j)}  [{j.state.value}]  job {j.id}")
        for note in notes:
            click.echo(f"Annotation {note.context!r} ({note.style}):")
            for line in note.body.splitlines():
                click.echo(f"  {line}")

    anyio.run(main)


@build.command()
@click.argument("pipeline")
@click.argument("number", type=int)
@click.argument("step")
@click.option(
    "--field",
    "fields",
    multiple=True,
    metavar="KEY=VALUE",
    help="A value for one of the step's fields (repeatable; give a key twice for a select "
    "field that takes several values).",
)
@client_options
@friendly_errors
def unblock(
    pipeline: str,
    number: int,
    step: str,
    fields: tuple[str, ...],
    config_file: Path | None,
    **flags: object,
) -> None:
    """Unblock a block or input step of build PIPELINE#NUMBER, so the build carries on.

    STEP is the step's key or id (`conveyor build show` lists them). The field values are
    checked against the step's fields and become build meta-data.
    """
    values: dict[str, str | list[str]] = {
        k: v[0] if len(v) == 1 else v for k, v in key_values("--field", fields).items()
    }
    cfg = settings(ClientSettings, given(**flags), config_file)

    async def main() -> None:
        from conveyor.api_client import ApiClient

        async with ApiClient.connect(cfg.endpoint, cfg.api_token) as api:
            b = await api.unblock_step(pipeline, number, step, values)
        unblocked = next((s for s in b.steps if step in (s.key, s.id)), None)
        name = (unblocked.label or unblocked.key) if unblocked is not None else step
        click.echo(f"Unblocked {name!r}: build {b.pipeline}#{b.number} is {b.state.value}")

    anyio.run(main)
