"""`conveyor run`."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import click

from conveyor.cli.common import config_option, friendly_errors, given, settings
from conveyor.config import RunSettings
from conveyor.errors import ConveyorError


@click.command()
@click.argument("pipeline_file", required=False, type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--agents", type=int, help="How many local agents run jobs side by side.  [default: 2]"
)
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Keep the build's database here instead of a temporary dir.")  # fmt: skip
@click.option("--shell", help="Shell that runs each command.  [default: /bin/bash -e -c]")
@click.option("--no-pty", is_flag=True, default=None, help="Run commands on pipes, not in a PTY.")
@click.option(
    "--unblock",
    is_flag=True,
    help="Unblock block and input steps without asking (fields from --field, else defaults).",
)
@click.option(
    "--field",
    "fields",
    multiple=True,
    metavar="KEY=VALUE",
    help="A value for a block or input step's field (repeatable).",
)
@click.option(
    "--trigger",
    "triggers",
    multiple=True,
    metavar="SLUG=FILE",
    help="The pipeline file a trigger step of SLUG builds (repeatable).  "
    "[default: SLUG.yml beside the pipeline file]",
)
@config_option
@friendly_errors
def run(
    pipeline_file: Path | None,
    config_file: Path | None,
    unblock: bool,
    fields: tuple[str, ...],
    triggers: tuple[str, ...],
    **flags: object,
) -> None:
    """Run a pipeline on this machine, in the current directory.

    PIPELINE_FILE defaults to .conveyor/pipeline.yml, then pipeline.yml. An embedded server
    and local agents run the build; each job's output is printed live, prefixed by its label.
    Exits 0 when the build passed, 1 when it failed, 130 when interrupted (Ctrl-C cancels
    the running jobs and leaves no process behind).

    \b
    Block and input steps: on a terminal you are asked; otherwise pass --unblock.
    Trigger steps build SLUG.yml next to the pipeline file, or the file given with --trigger.
    Jobs may add steps with `conveyor pipeline upload`.
    """
    import logging

    from conveyor.local import Unblocker, find_pipeline, run_local

    cfg = settings(RunSettings, given(**flags), config_file)
    unblocker = Unblocker(auto=unblock, fields=_pairs("--field", fields))
    trigger_files = {k: Path(v) for k, v in _pairs("--trigger", triggers).items()}
    logging.basicConfig(level=logging.WARNING, format="conveyor: %(levelname)s: %(message)s")
    path = find_pipeline(pipeline_file)

    async def main() -> int:
        result = await run_local(
            path, cfg, workdir=Path.cwd(), unblock=unblocker, triggers=trigger_files
        )
        return result.exit_code

    sys.exit(anyio.run(main))


def _pairs(option: str, items: tuple[str, ...]) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConveyorError(f"{option} {item!r} is not of the form KEY=VALUE")
        pairs[key] = value
    return pairs
