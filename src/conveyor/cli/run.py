"""`conveyor run`."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import click

from conveyor.cli.common import config_option, friendly_errors, given, settings
from conveyor.config import RunSettings


@click.command()
@click.argument("pipeline_file", required=False, type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--agents", type=int, help="How many local agents run jobs side by side.  [default: 2]"
)
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Keep the build's database here instead of a temporary dir.")  # fmt: skip
@click.option("--shell", help="Shell that runs each command.  [default: /bin/bash -e -c]")
@click.option("--no-pty", is_flag=True, default=None, help="Run commands on pipes, not in a PTY.")
@config_option
@friendly_errors
def run(pipeline_file: Path | None, config_file: Path | None, **flags: object) -> None:
    """Run a pipeline on this machine, in the current directory.

    PIPELINE_FILE defaults to .conveyor/pipeline.yml, then pipeline.yml. An embedded server
    and local agents run the build; each job's output is printed live, prefixed by its label.
    Exits 0 when the build passed, 1 when it failed, 130 when interrupted (Ctrl-C cancels
    the running jobs and leaves no process behind).
    """
    import logging

    from conveyor.local import find_pipeline, run_local

    cfg = settings(RunSettings, given(**flags), config_file)
    logging.basicConfig(level=logging.WARNING, format="conveyor: %(levelname)s: %(message)s")
    path = find_pipeline(pipeline_file)

    async def main() -> int:
        result = await run_local(path, cfg, workdir=Path.cwd())
        return result.exit_code

    sys.exit(anyio.run(main))
