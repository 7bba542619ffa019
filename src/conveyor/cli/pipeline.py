"""`conveyor pipeline check`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from conveyor.errors import PipelineError
from conveyor.pipeline import parse_pipeline


@click.group()
def pipeline() -> None:
    """Work with pipeline files."""


@pipeline.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
def check(files: tuple[Path, ...]) -> None:
    """Validate pipeline files without running them: exit 0 if all are valid, 1 if not."""
    ok = True
    for path in files:
        try:
            parsed = parse_pipeline(path.read_text(), filename=str(path))
        except OSError as exc:
            click.echo(f"{path}: cannot read: {exc.strerror}", err=True)
            ok = False
            continue
        except PipelineError as exc:
            click.echo(f"error: {exc}", err=True)
            ok = False
            continue
        for warning in parsed.warnings:
            click.echo(f"warning: {warning}", err=True)
        click.echo(f"{path}: ok ({len(parsed.steps)} steps)")
    sys.exit(0 if ok else 1)
