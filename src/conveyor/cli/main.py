"""`conveyor`: the root command. Each command group lives in its own module, imported only when
that command runs (or `--help` lists them all): `conveyor agent start` never loads the pipeline
parser, the server or the YAML loader unless it uses them."""

from __future__ import annotations

import importlib
import sys

import click

from conveyor import __version__

# httpx imports its own command-line client (`httpx._main`: rich and pygments, about 10 MiB)
# whenever those happen to be installed. Nothing here uses it; marking it absent makes httpx
# fall back to its stub `httpx.main`, so a process of ours never loads them for httpx.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

# Command name -> (module under conveyor.cli, attribute): loaded on first use.
COMMANDS: dict[str, tuple[str, str]] = {
    "agent": ("agent", "agent"),
    "annotate": ("annotate", "annotate"),
    "annotation": ("annotate", "annotation"),
    "artifact": ("artifact", "artifact"),
    "bootstrap": ("bootstrap", "bootstrap"),
    "build": ("build", "build"),
    "env": ("env", "env"),
    "job": ("job", "job"),
    "lock": ("lock", "lock"),
    "meta-data": ("metadata", "meta_data"),
    "pipeline": ("pipeline", "pipeline"),
    "redactor": ("env", "redactor"),
    "run": ("run", "run"),
    "server": ("server", "server"),
    "step": ("step", "step"),
}


class LazyGroup(click.Group):
    """A group whose commands are imported from their modules when first looked up."""

    def __init__(self, *args: object, lazy: dict[str, tuple[str, str]], **kwargs: object):
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.lazy, *super().list_commands(ctx)})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            module, attr = self.lazy[cmd_name]
            command = getattr(importlib.import_module(f"conveyor.cli.{module}"), attr)
            assert isinstance(command, click.Command), (cmd_name, command)
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(
    cls=LazyGroup,
    lazy=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="conveyor")
def cli() -> None:
    """Conveyor: a self-hosted CI system.

    \b
    Run a pipeline on this machine:        conveyor run [pipeline.yml]
    Check pipeline files:                  conveyor pipeline check FILE...
    Run the dispatch server:               conveyor server
    Run build agents against a server:     conveyor agent start --token TOKEN
    Operate a server:                      conveyor build create / show, job log, agent list
    Store pipelines on a server:           conveyor pipeline set / list / show
    Unblock a step, retry a job:           conveyor build unblock, job retry
    Add steps from inside a job:           conveyor pipeline upload [FILE]
    Share data from inside a job:          conveyor meta-data, annotate, artifact, step, lock
    Change a job's env, redact a secret:   conveyor env, redactor add
    Run one job here, hooks and all:       conveyor bootstrap --job job.json

    Every flag can also be set as CONVEYOR_<FLAG> in the environment (e.g. CONVEYOR_SPAWN=4)
    or in a YAML file given with --config; flags win over the environment, which wins over
    the file.
    """


def main() -> None:
    cli(prog_name="conveyor")


if __name__ == "__main__":
    main()
