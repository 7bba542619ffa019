"""`conveyor artifact upload / download / search / shasum`, from inside a job."""

from __future__ import annotations

import click


@click.group()
def artifact() -> None:
    """Upload files from a job, and find and download the build's artifacts."""
