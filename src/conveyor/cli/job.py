"""`conveyor job log` and `conveyor job retry`."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import click

from conveyor.cli.client_options import client_options
from conveyor.cli.common import friendly_errors, given, settings
from conveyor.config import ClientSettings


@click.group()
def job() -> None:
    """Inspect and retry jobs."""


@job.command()
@click.argument("job_id")
@click.option(
    "--timestamps", is_flag=True, help="Prefix each line with the UTC time it was written."
)
@click.option(
    "--raw", is_flag=True, help="Print the log as stored, with its timestamp escape sequences."
)
@client_options
@friendly_errors
def log(
    job_id: str, timestamps: bool, raw: bool, config_file: Path | None, **flags: object
) -> None:
    """Print a job's log: the bytes the command wrote.

    Commands run in a PTY, which ends lines with \\r\\n: the log keeps those bytes as the
    terminal produced them.
    """
    if timestamps and raw:
        raise click.UsageError("--timestamps and --raw cannot be used together")
    mode = "render" if timestamps else "raw" if raw else "strip"
    cfg = settings(ClientSettings, given(**flags), config_file)

    async def main() -> None:
        from conveyor.api_client import ApiClient

        out = sys.stdout.buffer
        async with ApiClient.connect(cfg.endpoint, cfg.api_token) as api:
            async for data in api.job_log(job_id, mode):
                out.write(data)
        out.flush()

    anyio.run(main)


@job.command()
@click.argument("job_id")
@client_options
@friendly_errors
def retry(job_id: str, config_file: Path | None, **flags: object) -> None:
    """Run a finished job again, as a new attempt, and print the new job's id.

    Steps that did not run because the job failed run once the new attempt passes. A step
    may forbid manual retries (`retry: {manual: false}`), and a passed job is retried only
    when its step says `permit_on_passed: true`.
    """
    cfg = settings(ClientSettings, given(**flags), config_file)

    async def main() -> None:
        from conveyor.api_client import ApiClient

        async with ApiClient.connect(cfg.endpoint, cfg.api_token) as api:
            new = await api.retry_job(job_id)
        click.echo(f"Retrying {new.label!r}: attempt {new.attempt} is job {new.id}")

    anyio.run(main)
