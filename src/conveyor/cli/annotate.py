"""`conveyor annotate` and `conveyor annotation remove`, from inside a job."""

from __future__ import annotations

import sys
from typing import get_args

import click

from conveyor import protocol as p
from conveyor.cli.common import friendly_errors
from conveyor.cli.injob import run_in_job
from conveyor.errors import ConveyorError


@click.command()
@click.argument("body", required=False)
@click.option(
    "--style",
    type=click.Choice(get_args(p.AnnotationStyle)),
    help="How the annotation is shown.  [default: the context's current style, else default]",
)
@click.option(
    "--context",
    default="default",
    show_default=True,
    help="Names the annotation: annotating the same context again replaces it.",
)
@click.option("--append", is_flag=True, help="Add BODY to the context's annotation.")
@friendly_errors
def annotate(body: str | None, style: str | None, context: str, append: bool) -> None:
    """Add a Markdown annotation to the build (`-` or no BODY: read standard input).

    The Markdown is kept as written. One annotation per --context: a job that annotates the
    same context replaces it, or with --append adds to it. For use in a job's command.

    \b
      conveyor annotate "Coverage: **92 %**" --style success --context coverage
      ./summarize-failures.sh | conveyor annotate --style error --context tests
    """
    if body is None or body == "-":
        if body is None and sys.stdin.isatty():
            raise ConveyorError("no annotation body: give BODY, or pipe it in with `-`")
        body = sys.stdin.read()
    if not body.strip() and not append:
        raise ConveyorError("the annotation body is empty")
    if not 1 <= len(context) <= 255:
        raise ConveyorError("--context must be 1 to 255 characters")
    request = p.AnnotationRequest(
        body=body,
        style=style,
        context=context,
        append=append,
    )
    out = run_in_job("conveyor annotate", lambda job: job.annotate(request))
    verb = "appended to" if append else "wrote"
    click.echo(f"{verb} annotation {out.context!r} ({out.style})", err=True)


@click.group()
def annotation() -> None:
    """Manage the build's annotations (see `conveyor annotate`)."""


@annotation.command("remove")
@click.option("--context", default="default", show_default=True, help="The annotation's context.")
@friendly_errors
def remove(context: str) -> None:
    """Remove the build's annotation of --context."""
    removed = run_in_job("conveyor annotation remove", lambda job: job.remove_annotation(context))
    if not removed:
        raise ConveyorError(f"this build has no annotation with context {context!r}")
    click.echo(f"removed annotation {context!r}", err=True)
