"""`conveyor artifact upload / download / search / shasum`, from inside a job."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from conveyor import protocol as p
from conveyor.artifact_paths import split_globs
from conveyor.cli.common import friendly_errors
from conveyor.cli.injob import job_context, run_in_job
from conveyor.errors import ConveyorError

if TYPE_CHECKING:
    # Imported when a command runs, not when `conveyor` starts.
    from conveyor.client import JobClient

_STEP = click.option(
    "--step",
    metavar="KEY",
    help="Only artifacts uploaded by the jobs of this step (its key, or its id).",
)
_BUILD = click.option(
    "--build",
    metavar="ID",
    help="The build to look in; only the job's own build is allowed (a job never reads "
    "another build's artifacts).  [default: this job's build]",
)


@click.group()
def artifact() -> None:
    """Upload files from a job, and find and download the build's artifacts.

    \b
    Inside a job:
      conveyor artifact upload 'dist/**/*.tar.gz;coverage/*.xml'
      conveyor artifact download 'dist/*.tar.gz' .
      conveyor artifact search 'dist/*'
      conveyor artifact shasum dist/app.tar.gz

    Paths are relative to the directory the upload ran in. In globs and queries, `*` and `?`
    stay within one directory and `**` matches any number of directories.
    """


@artifact.command()
@click.argument("globs", nargs=-1, required=True, metavar="GLOB...")
@friendly_errors
def upload(globs: tuple[str, ...]) -> None:
    """Upload the files matching GLOB... (relative to the current directory) as artifacts of
    this job.

    Quote globs so that the shell does not expand them; `**` matches any number of
    directories, and one argument may hold several globs separated by `;`. A file's artifact
    path is its path relative to the current directory; uploading a path again from the same
    job replaces it. Globs that match no file are warned about. Absolute globs and globs with
    `..` are refused: artifacts come from inside the current directory.
    """
    from conveyor import artifacts

    job_context(os.environ, "conveyor artifact upload")
    patterns = split_globs(globs)
    if not patterns:
        raise ConveyorError("no glob given: name the files to upload, e.g. 'dist/**'")
    artifacts.check_globs(patterns)
    root = Path.cwd()

    async def say(line: str) -> None:
        if line.startswith(("warning: ", "error: ")):
            click.echo(f"conveyor: {line}", err=True)
        else:
            click.echo(line)

    count = run_in_job(
        "conveyor artifact upload", lambda job: artifacts.upload(job, root, patterns, say)
    )
    if count == 0:
        click.echo("conveyor: warning: no files matched: nothing was uploaded", err=True)


@artifact.command()
@click.argument("query")
@click.argument("destination", type=click.Path(path_type=Path, file_okay=False))
@_STEP
@_BUILD
@friendly_errors
def download(query: str, destination: Path, step: str | None, build: str | None) -> None:
    """Download the build's artifacts whose paths match QUERY into the directory DESTINATION.

    Each artifact is written to DESTINATION/<its path> (directories are made as needed, and a
    file already there is replaced) and checked against its SHA-256. When several jobs
    uploaded the same path, the latest upload is downloaded. No match is an error.
    """
    from conveyor import artifacts

    async def call(job: JobClient) -> list[tuple[p.ArtifactOut, Path]]:
        found = artifacts.newest_by_path(await job.search_artifacts(query, step=step, build=build))
        if not found:
            raise ConveyorError(_nothing_matches(query, step))
        return [(a, await artifacts.download(job, a, destination)) for a in found]

    for item, written in run_in_job("conveyor artifact download", call):
        click.echo(f"downloaded {item.path} to {written} ({item.size} bytes)")


@artifact.command()
@click.argument("query")
@_STEP
@_BUILD
@friendly_errors
def search(query: str, step: str | None, build: str | None) -> None:
    """List the build's artifacts whose paths match QUERY, one per line: path, size in bytes,
    SHA-256, step key and job id, separated by tabs. No match is an error (exit status 1).

    Every upload is listed: a path uploaded by several jobs appears once for each.
    """

    async def call(job: JobClient) -> list[p.ArtifactOut]:
        return await job.search_artifacts(query, step=step, build=build)

    found = run_in_job("conveyor artifact search", call)
    if not found:
        raise ConveyorError(_nothing_matches(query, step))
    for item in found:
        click.echo("\t".join([item.path, str(item.size), item.sha256, item.step_key or "-",
                              item.job_id]))  # fmt: skip


@artifact.command()
@click.argument("query")
@_STEP
@_BUILD
@click.option(
    "--sha256",
    is_flag=True,
    help="Accepted for compatibility with Buildkite's agent: the SHA-256 is what is printed "
    "in any case.",
)
@friendly_errors
def shasum(query: str, step: str | None, build: str | None, sha256: bool) -> None:
    """Print the SHA-256 of the one artifact whose path matches QUERY.

    When several jobs uploaded that path, the latest upload counts. No match, or matches with
    different paths, is an error: narrow QUERY or give --step.
    """
    from conveyor import artifacts

    async def call(job: JobClient) -> list[p.ArtifactOut]:
        return await job.search_artifacts(query, step=step, build=build)

    found = artifacts.newest_by_path(run_in_job("conveyor artifact shasum", call))
    if not found:
        raise ConveyorError(_nothing_matches(query, step))
    if len(found) > 1:
        shown = ", ".join(a.path for a in found[:5]) + (", …" if len(found) > 5 else "")
        raise ConveyorError(
            f"{len(found)} artifacts match {query!r} ({shown}): give a query that matches one"
        )
    click.echo(found[0].sha256)


def _nothing_matches(query: str, step: str | None) -> str:
    where = f" uploaded by step {step!r}" if step else ""
    return f"no artifact of this build{where} matches {query!r}"
