"""`conveyor annotate` and `conveyor annotation remove`, from inside a job."""

from __future__ import annotations

import click


@click.command()
def annotate() -> None:
    """Add a Markdown annotation to the build."""


@click.group()
def annotation() -> None:
    """Manage the build's annotations."""
