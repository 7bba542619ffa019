"""`conveyor pipeline check`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from conveyor.cli.common import friendly_errors, read_pipeline_text
from conveyor.errors import ConveyorError
from conveyor.pipeline import parse_pipeline


@click.group()
def pipeline() -> None:
    """Work with pipeline files."""


@pipeline.command()
@click.argument(
    "files",
    nargs=-1,
    required=True,
    type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
)
@friendly_errors
def check(files: tuple[Path, ...]) -> None:
    """Validate pipeline files without running them: exit 0 if all are valid, 1 if not.

    Errors and warnings name the file, line and column. `-` reads standard input.
    """
    ok = True
    for path in files:
        try:
            text = read_pipeline_text(path)
            parsed = parse_pipeline(text, filename="<stdin>" if str(path) == "-" else str(path))
        except ConveyorError as exc:  # unreadable, or rejected (PipelineError)
            click.echo(f"error: {exc}", err=True)
            ok = False
            continue
        for warning in parsed.warnings:
            click.echo(f"warning: {warning}", err=True)
        click.echo(f"{path}: ok ({len(parsed.steps)} steps)")
    sys.exit(0 if ok else 1)
