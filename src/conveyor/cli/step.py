"""`conveyor step get / update`, from inside a job."""

from __future__ import annotations

import click


@click.group()
def step() -> None:
    """Read and change steps of the job's build."""
