"""`conveyor`: the root command. Each command group lives in its own module."""

from __future__ import annotations

import click

from conveyor import __version__
from conveyor.cli import (
    agent,
    annotate,
    artifact,
    bootstrap,
    build,
    env,
    job,
    lock,
    metadata,
    pipeline,
    run,
    server,
    step,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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


cli.add_command(run.run)
cli.add_command(server.server)
cli.add_command(agent.agent)
cli.add_command(build.build)
cli.add_command(job.job)
cli.add_command(pipeline.pipeline)
cli.add_command(metadata.meta_data)
cli.add_command(artifact.artifact)
cli.add_command(annotate.annotate)
cli.add_command(annotate.annotation)
cli.add_command(step.step)
cli.add_command(lock.lock)
cli.add_command(bootstrap.bootstrap)
cli.add_command(env.env)
cli.add_command(env.redactor)


def main() -> None:
    cli(prog_name="conveyor")


if __name__ == "__main__":
    main()
