"""`conveyor pipeline check / upload / set / list / show`."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import anyio
import click

from conveyor import protocol as p
from conveyor.cli.build import env_pairs
from conveyor.cli.client_options import client_options
from conveyor.cli.common import friendly_errors, given, read_pipeline_text, settings
from conveyor.cli.injob import job_context, run_in_job
from conveyor.config import ClientSettings
from conveyor.errors import ConveyorError
from conveyor.pipeline import Pipeline, check_graph, parse_pipeline

# Where `conveyor pipeline upload` looks when given no file, in order (Buildkite's list, then
# Conveyor's own).
DEFAULT_UPLOAD_FILES = (
    ".buildkite/pipeline.yml",
    ".buildkite/pipeline.yaml",
    ".buildkite/pipeline.json",
    "buildkite.yml",
    "buildkite.yaml",
    ".conveyor/pipeline.yml",
)

_FILE = click.Path(path_type=Path, dir_okay=False, allow_dash=True)


@click.group()
def pipeline() -> None:
    """Check pipeline files, upload steps from inside a job, and manage a server's pipelines."""


@pipeline.command()
@click.argument("files", nargs=-1, required=True, type=_FILE)
@click.option(
    "--env",
    "-e",
    multiple=True,
    metavar="KEY=VALUE",
    help="Interpolate $VARIABLES as an upload would, with these values (repeatable). "
    "Without --env the files are checked as written.",
)
@friendly_errors
def check(files: tuple[Path, ...], env: tuple[str, ...]) -> None:
    """Validate pipeline files without running them: exit 0 if all are valid, 1 if not.

    Errors and warnings name the file, line and column. A key used by two steps is an error;
    a `depends_on` naming a key no step of the file has is a warning (an upload may add the
    file to a build that has that step). `-` reads standard input.
    """
    variables = env_pairs(env) if env else None
    ok = True
    for path in files:
        filename = "<stdin>" if str(path) == "-" else str(path)
        try:
            text = read_pipeline_text(path)
            parsed = parse_pipeline(text, filename=filename, env=variables)
            graph_warnings = check_graph(parsed, filename=filename, unknown_is_error=False)
            if not graph_warnings:
                _check_order(parsed, filename)
        except ConveyorError as exc:  # unreadable, or rejected (PipelineError)
            click.echo(f"error: {exc}", err=True)
            ok = False
            continue
        for warning in [*parsed.warnings, *graph_warnings]:
            click.echo(f"warning: {warning}", err=True)
        click.echo(f"{path}: ok ({len(parsed.steps)} steps)")
    sys.exit(0 if ok else 1)


def _check_order(parsed: Pipeline, filename: str) -> None:
    """Plan the steps as a build would, which finds `depends_on` cycles (PipelineError).

    The planner comes with the server extra; an agent-only install checks all but cycles.
    """
    try:
        from conveyor.server.planner import plan_steps
    except ImportError:
        return
    plan_steps(parsed, filename=filename)


def find_upload_file(directory: Path) -> Path:
    for name in DEFAULT_UPLOAD_FILES:
        if (directory / name).is_file():
            return Path(name)
    raise ConveyorError(
        f"no pipeline file given, and none found in {directory}: looked for "
        + ", ".join(DEFAULT_UPLOAD_FILES)
    )


@pipeline.command()
@click.argument("file", required=False, type=_FILE)
@click.option(
    "--replace",
    is_flag=True,
    help="Remove the build's steps that have not started yet, then add these.",
)
@friendly_errors
def upload(file: Path | None, replace: bool) -> None:
    """Add the steps of FILE to the running build, right after this job's step.

    For use in a job's command: the agent gives the job the endpoint, the job's token and its
    id (CONVEYOR_AGENT_ENDPOINT, CONVEYOR_AGENT_ACCESS_TOKEN, CONVEYOR_JOB_ID, or their
    BUILDKITE_ names). $VARIABLES are interpolated with the job's environment on the server.
    A `wait` after this job's step also waits for the new steps.

    Without FILE, the first of .buildkite/pipeline.yml, .buildkite/pipeline.yaml,
    .buildkite/pipeline.json, buildkite.yml, buildkite.yaml and .conveyor/pipeline.yml in the
    current directory is uploaded. `-` reads standard input.
    """
    hint = "To check a file here, run `conveyor pipeline check FILE`"
    job_context(os.environ, "conveyor pipeline upload", hint)  # outside a job, say so first
    path = file if file is not None else find_upload_file(Path.cwd())
    text = read_pipeline_text(path)
    if not text.strip():
        raise ConveyorError(f"{path} is empty: there are no steps to upload")
    body = p.PipelineUploadRequest(
        pipeline=text,
        filename="<stdin>" if str(path) == "-" else str(path),
        replace=replace,
        upload_id=uuid.uuid4().hex,
    )

    answer = run_in_job(
        "conveyor pipeline upload",
        lambda job: job.upload_pipeline(body),
        hint,
    )
    for warning in answer.warnings:
        click.echo(f"warning: {warning}", err=True)
    steps = "step" if answer.steps_added == 1 else "steps"
    line = f"uploaded {answer.steps_added} {steps} from {body.filename}"
    if answer.steps_removed:
        line += f" (replaced {answer.steps_removed} pending)"
    click.echo(line)


@pipeline.command("set")
@click.argument("slug")
@click.option("--name", help="A name to show for the pipeline.  [default: the slug]")
@click.option("--repository", help="The repository builds check out (e.g. a git URL).")
@click.option("--default-branch", help="The branch a build gets when none is given.")
@click.option(
    "--steps",
    "steps",
    type=_FILE,
    help="A pipeline file whose steps builds run when created without one; it is checked "
    "first. `-` reads standard input.",
)
@click.option(
    "--no-steps", is_flag=True, help="Remove the stored steps (builds must then bring their own)."
)
@click.option(
    "--steps-file",
    help="The pipeline file in the checkout to upload when there are no stored steps.",
)
@client_options
@friendly_errors
def set_pipeline(
    slug: str,
    name: str | None,
    repository: str | None,
    default_branch: str | None,
    steps: Path | None,
    no_steps: bool,
    steps_file: str | None,
    config_file: Path | None,
    **flags: object,
) -> None:
    """Create the pipeline SLUG on the server, or change what is given of it."""
    if steps is not None and no_steps:
        raise ConveyorError("give --steps FILE or --no-steps, not both")
    fields: dict[str, object] = given(
        name=name, repository=repository, default_branch=default_branch, steps_file=steps_file
    )
    if steps is not None:
        fields["steps"] = read_pipeline_text(steps)
        if not str(fields["steps"]).strip():
            raise ConveyorError(f"{steps} is empty: there are no steps to store")
        fields["filename"] = "<stdin>" if str(steps) == "-" else str(steps)
    elif no_steps:
        fields["steps"] = None
    for key, value in fields.items():
        if value == "":
            raise ConveyorError(f"--{key.replace('_', '-')} may not be empty")
    body = p.PipelineIn.model_validate(fields)
    cfg = settings(ClientSettings, given(**flags), config_file)

    async def main() -> p.PipelineOut:
        from conveyor.api_client import ApiClient

        async with ApiClient.connect(cfg.endpoint, cfg.api_token) as api:
            return await api.set_pipeline(slug, body)

    row = anyio.run(main)
    click.echo(f"Pipeline {row.slug} saved")
    _print_pipeline(row)


@pipeline.command("list")
@client_options
@friendly_errors
def list_pipelines(config_file: Path | None, **flags: object) -> None:
    """List the server's pipelines: slug, name, default branch, whether steps are stored,
    and repository."""
    cfg = settings(ClientSettings, given(**flags), config_file)

    async def main() -> None:
        from conveyor.api_client import ApiClient

        async with ApiClient.connect(cfg.endpoint, cfg.api_token) as api:
            rows = await api.list_pipelines()
        if not rows:
            click.echo("no pipelines (`conveyor pipeline set SLUG` creates one)")
            return
        table = [("SLUG", "NAME", "BRANCH", "STEPS", "REPOSITORY")]
        for r in rows:
            stored = "stored" if r.steps else f"from {r.steps_file}"
            table.append((r.slug, r.name, r.default_branch, stored, r.repository or "-"))
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        for row in table:
            click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())

    anyio.run(main)


@pipeline.command()
@click.argument("slug")
@client_options
@friendly_errors
def show(slug: str, config_file: Path | None, **flags: object) -> None:
    """Show a pipeline's settings and its stored steps."""
    cfg = settings(ClientSettings, given(**flags), config_file)

    async def main() -> None:
        from conveyor.api_client import ApiClient

        async with ApiClient.connect(cfg.endpoint, cfg.api_token) as api:
            row = await api.get_pipeline(slug)
        click.echo(f"Pipeline {row.slug}")
        _print_pipeline(row, with_steps=True)

    anyio.run(main)


def _print_pipeline(row: p.PipelineOut, *, with_steps: bool = False) -> None:
    click.echo(f"  name            {row.name}")
    click.echo(f"  repository      {row.repository or '-'}")
    click.echo(f"  default branch  {row.default_branch}")
    click.echo(f"  steps file      {row.steps_file}")
    if row.steps is None:
        click.echo("  steps           none stored: a build must be given its pipeline")
        return
    lines = row.steps.splitlines()
    click.echo(f"  steps           stored ({len(lines)} lines)")
    if with_steps:
        click.echo("")
        for line in lines:
            click.echo(f"    {line}")
