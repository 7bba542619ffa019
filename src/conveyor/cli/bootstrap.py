"""`conveyor bootstrap`: the job executor; with `--job FILE`, one job run here without a server."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import click

from conveyor.cli.common import friendly_errors


@click.command()
@click.option(
    "--job",
    "job_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Run the job this JSON file describes, here, without a server (see below).",
)
@click.option(
    "--dir",
    "workdir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Where the job runs (and its repository is checked out).  [default: .]",
)
@click.option(
    "--shell",
    default="/bin/bash -e -c",
    show_default=True,
    help="Shell that runs hooks and the command.",
)
@click.option(
    "--hooks-path",
    type=click.Path(path_type=Path, file_okay=False),
    help="Directory of agent job hooks.",
)
@click.option(
    "--plugins-path",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("~/.conveyor/plugins"),
    show_default=True,
    help="Where plugins are fetched to.",
)
@click.option("--no-pty", is_flag=True, help="Run on pipes, not in a PTY.")
@click.option(
    "--log-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also write the job's log (redacted, as a server would store it) here.",
)
@friendly_errors
def bootstrap(
    job_file: Path | None,
    workdir: Path | None,
    shell: str,
    hooks_path: Path | None,
    plugins_path: Path,
    no_pty: bool,
    log_file: Path | None,
) -> None:
    """Run a job's phases: hooks, plugins, checkout, the command, artifact upload.

    \b
    The agent starts this for every job that has hooks, plugins, a repository or artifact
    paths; it reads the job from its environment (CONVEYOR_COMMAND, CONVEYOR_REPO,
    CONVEYOR_PLUGINS, CONVEYOR_HOOKS_PATH, ...) and exits with the job's status.

    \b
    With --job FILE it runs one job on this machine, in a PTY, printing its output:
      {"command": "make test", "env": {"A": "1"}, "repository": "https://host/repo.git",
       "commit": "HEAD", "branch": "main", "plugins": [{"source": "./plugin", "config": {}}]}
    and exits with the job's exit status.
    """
    if job_file is None:
        from conveyor.runner.bootstrap import main

        main()
        return
    from conveyor.agent.onejob import check_checkout_dir, read_job_file, run_job_file
    from conveyor.agent.worker import WorkerOptions

    job = read_job_file(job_file)
    check_checkout_dir(job, workdir.absolute() if workdir else None)
    opts = WorkerOptions(
        endpoint="",
        registration_token="",
        shell=shell,
        use_pty=not no_pty,
        hooks_path=hooks_path.expanduser().absolute() if hooks_path else None,
        plugins_path=plugins_path.expanduser().absolute(),
        workdir=(workdir or Path.cwd()).absolute(),
    )
    result = anyio.run(lambda: run_job_file(job, opts, log_file=log_file))
    sys.exit(result.exit_status if 0 <= result.exit_status < 256 else 255)
