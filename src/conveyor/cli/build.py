"""`conveyor build create` and `conveyor build show`."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import click

from conveyor import protocol as p
from conveyor.cli.client_options import client_options
from conveyor.cli.common import friendly_errors, given, read_pipeline_text, settings
from conveyor.config import ClientSettings
from conveyor.errors import ConveyorError
from conveyor.report import BuildReporter, describe

_SLUG_HELP = "The pipeline's slug (created on first use).  [default: default]"


@click.group()
def build() -> None:
    """Create and inspect builds."""


def _env_pairs(pairs: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConveyorError(f"--env {pair!r} is not KEY=VALUE")
        env[key] = value
    return env


@build.command()
@click.option(
    "--pipeline-file",
    "-f",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True, allow_dash=True),
    help="The pipeline YAML to run; `-` reads standard input.",
)
@click.option("--pipeline", "slug", default="default", show_default=True, help=_SLUG_HELP)
@click.option("--branch", default="main", show_default=True)
@click.option("--commit", default="HEAD", show_default=True)
@click.option("--message", "-m", default="", help="The build message.")
@click.option(
    "--env", "-e", multiple=True, help="KEY=VALUE for every job of the build (repeatable)."
)
@click.option("--wait", is_flag=True, help="Follow the build and exit 0 if it passed, 1 if not.")
@client_options
@friendly_errors
def create(
    pipeline_file: Path,
    slug: str,
    branch: str,
    commit: str,
    message: str,
    env: tuple[str, ...],
    wait: bool,
    config_file: Path | None,
    **flags: object,
) -> None:
    """Create a build from a pipeline file and print its number."""
    cfg = settings(ClientSettings, given(**flags), config_file)
    from_stdin = str(pipeline_file) == "-"
    body = p.CreateBuildRequest(
        pipeline=read_pipeline_text(pipeline_file),
        filename="<stdin>" if from_stdin else str(pipeline_file),
        branch=branch,
        commit=commit,
        message=message,
        env=_env_pairs(env),
    )

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
@click.argument("number", type=int)
@click.option("--pipeline", "slug", default="default", show_default=True, help=_SLUG_HELP)
@client_options
@friendly_errors
def show(number: int, slug: str, config_file: Path | None, **flags: object) -> None:
    """Show a build, its state and its jobs."""
    cfg = settings(ClientSettings, given(**flags), config_file)

    async def main() -> None:
        from conveyor.api_client import ApiClient

        async with ApiClient.connect(cfg.endpoint, cfg.api_token) as api:
            b = await api.get_build(slug, number)
        click.echo(f"Build {b.pipeline}#{b.number}: {b.state.value}")
        click.echo(
            f"  branch {b.branch}  commit {b.commit}  created {b.created_at:%Y-%m-%d %H:%M:%S}Z"
        )
        if b.message:
            click.echo(f"  {b.message}")
        for j in b.jobs:
            click.echo(f"  {describe(j)}  [{j.state.value}]  job {j.id}")

    anyio.run(main)
