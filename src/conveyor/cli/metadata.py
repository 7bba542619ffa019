"""`conveyor meta-data set / get / exists / keys`, from inside a job."""

from __future__ import annotations

import sys

import click

from conveyor.cli.common import friendly_errors
from conveyor.cli.injob import run_in_job
from conveyor.errors import ConveyorError

# `exists` exits with this when the key is missing (as Buildkite's agent does), so scripts can
# tell "no" from an error (1).
MISSING_STATUS = 100


@click.group("meta-data")
def meta_data() -> None:
    """Build-wide key/value data, shared by every job of the build.

    A value set by one job is seen by every job of the build that runs after it, on any agent,
    and in the REST API (the build's `meta_data`). Block and input steps store their field
    values here too. For use in a job's command: it authenticates with the job's own token.
    """


@meta_data.command("set")
@click.argument("key")
@click.argument("value", required=False)
@friendly_errors
def set_value(key: str, value: str | None) -> None:
    """Set KEY to VALUE for the whole build (`-` or no VALUE: read standard input).

    \b
      conveyor meta-data set release-version 1.4.2
      git rev-parse HEAD | conveyor meta-data set commit -
    """
    if value is None or value == "-":
        if value is None and sys.stdin.isatty():
            raise ConveyorError(f"no value for {key!r}: give VALUE, or pipe it in with `-`")
        value = sys.stdin.read()
    text = value

    run_in_job("conveyor meta-data set", lambda job: job.set_meta_data(key, text))


@meta_data.command("get")
@click.argument("key")
@click.option("--default", "default", help="Print this when the build has no KEY (exit 0).")
@friendly_errors
def get_value(key: str, default: str | None) -> None:
    """Print the value of KEY. Exits 1 when the build has no KEY (unless --default is given)."""
    value = run_in_job("conveyor meta-data get", lambda job: job.get_meta_data(key))
    if value is None:
        if default is None:
            raise ConveyorError(f"this build has no meta-data {key!r} (give --default to allow it)")
        value = default
    click.echo(value, nl=False)


@meta_data.command("exists")
@click.argument("key")
@friendly_errors
def exists(key: str) -> None:
    """Exit 0 when the build has KEY, 100 when it does not (1 on an error)."""
    value = run_in_job("conveyor meta-data exists", lambda job: job.get_meta_data(key))
    if value is None:
        sys.exit(MISSING_STATUS)


@meta_data.command("keys")
@friendly_errors
def keys() -> None:
    """Print the build's meta-data keys, one per line, sorted."""
    for key in run_in_job("conveyor meta-data keys", lambda job: job.meta_data_keys()):
        click.echo(key)
