"""`conveyor agent start` and `conveyor agent list`."""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import anyio
import click

from conveyor.cli.client_options import client_options
from conveyor.cli.common import config_option, friendly_errors, given, settings, setup_logging
from conveyor.config import AgentSettings, ClientSettings
from conveyor.errors import ConveyorError

log = logging.getLogger("conveyor.agent")


@click.group()
def agent() -> None:
    """Run a build agent, or list the agents a server knows."""


@agent.command()
@click.option("--endpoint", help="The server's URL.  [default: http://127.0.0.1:8080]")
@click.option("--token", help="The agent registration token (`conveyor server token`).")
@click.option(
    "--name", help="Agent name; %hostname and %spawn are replaced.  [default: %hostname-%spawn]"
)
@click.option("--tags", help="Tags as k=v,k2=v2; jobs select agents by them.")
@click.option("--queue", help="The queue to serve (the `queue` tag).  [default: default]")
@click.option("--priority", type=int, help="Higher-priority agents are offered jobs first.")
@click.option("--spawn", type=int, help="How many workers (concurrent jobs) to run.  [default: 1]")
@click.option(
    "--build-path",
    type=click.Path(path_type=Path, file_okay=False),
    help="Where jobs run: <build-path>/<agent-name>/<pipeline>.  [default: ~/.conveyor/builds]",
)
@click.option("--shell", help="Shell that runs each command.  [default: /bin/bash -e -c]")
@click.option(
    "--ping-mode",
    type=click.Choice(["auto", "ping-only", "stream-only"]),
    help="How jobs arrive: a stream the server pushes on, pings, or the stream with pings "
    "as a fallback.  [default: auto]",
)
@click.option("--ping-interval", help="Seconds between pings (integer, ≥ 2; 0 = the server's).")
@click.option(
    "--cancel-grace-period",
    type=int,
    help="Seconds between the cancel signal and SIGKILL.  [default: 10]",
)
@click.option("--no-pty", is_flag=True, default=None, help="Run commands on pipes, not in a PTY.")
@click.option(
    "--disconnect-after-job",
    is_flag=True,
    default=None,
    help="Run one job per worker, then disconnect and exit 0.",
)
@click.option(
    "--disconnect-after-idle-timeout",
    type=int,
    help="Stop once every worker has been idle this many seconds (0: never).",
)
@click.option(
    "--disconnect-after-uptime",
    type=int,
    help="Stop (after running jobs finish) once up this many seconds (0: never).",
)
@click.option("--acquire-job", help="Run this one job (by id), then exit.")
@click.option(
    "--hooks-path",
    type=click.Path(path_type=Path, file_okay=False),
    help="Directory of agent hooks: agent-startup and agent-shutdown, and the job hooks "
    "(environment, pre-checkout, checkout, post-checkout, pre-command, command, post-command, "
    "pre-artifact, post-artifact, pre-exit) that every job runs.",
)
@click.option(
    "--plugins-path",
    type=click.Path(path_type=Path, file_okay=False),
    help="Where plugins are fetched to.  [default: ~/.conveyor/plugins]",
)
@click.option(
    "--no-plugins", is_flag=True, default=None, help="Refuse jobs whose steps use plugins."
)
@click.option(
    "--allowed-plugins",
    help="Regular expression a plugin's source must match to run (searched, not anchored); "
    "other plugins fail the job.  [default: any]",
)
@click.option(
    "--no-local-hooks",
    is_flag=True,
    default=None,
    help="Fail jobs whose repository has hooks (.conveyor/hooks, .buildkite/hooks).",
)
@click.option(
    "--git-mirrors-path",
    type=click.Path(path_type=Path, file_okay=False),
    help="Keep a bare mirror of each repository here; checkouts borrow its objects, so "
    "repositories are cloned once per host.  [default: off]",
)
@click.option(
    "--git-mirrors-lock-timeout",
    type=int,
    help="Seconds a job waits for another job updating the same mirror; past it the job "
    "fails with exit status 94.  [default: 300]",
)
@click.option(
    "--max-log-size",
    type=int,
    help="Bytes of a job's log that are stored; past them the output is dropped, with one "
    "notice line in the log.  [default: 1073741824 (1 GiB)]",
)
@click.option(
    "--redacted-vars",
    help="Comma-separated globs of variable names whose values are kept out of job logs.  "
    "[default: *_PASSWORD,*_SECRET,*_TOKEN,*_PRIVATE_KEY,*_SSH_KEY,*_ACCESS_KEY,*_SECRET_KEY,"
    "*_API_KEY,*_CONNECTION_STRING]",
)
@click.option(
    "--cancel-signal",
    help="Signal a canceled job's process group gets first (SIGKILL follows after the grace "
    "period).  [default: SIGTERM]",
)
@click.option(
    "--shutdown-hook",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Program run when the agent stops; gets the reason (idle, job-finished, requested, "
    "interrupted, unable-to-reach-server, uptime) as $1 and CONVEYOR_AGENT_SHUTDOWN_REASON.",
)
@click.option(
    "--health-check-addr",
    help="HOST:PORT for /healthz, /status.json and /metrics (off unless given).",
)
@click.option(
    "--locks-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Directory (mode 0700) that `conveyor lock` locks live in; agents sharing it exclude "
    "each other's jobs.  [default: $TMPDIR/conveyor-locks-<uid>]",
)
@config_option
@friendly_errors
def start(config_file: Path | None, **flags: object) -> None:
    """Register with the server and run jobs until stopped.

    \b
    Signals:
      SIGTERM or SIGINT once: take no more jobs, finish the running ones, disconnect, exit 0.
      Twice: cancel the running jobs (cancel signal, then SIGKILL after the grace period);
      they finish as -1 (agent_stop); disconnect, exit 0.
      Three times, or SIGQUIT: ungraceful: every job process is killed at once (SIGKILL),
      the jobs finish as -1 (agent_stop), disconnect, exit 1.
    """
    from conveyor.agent.jobenv import AGENT_ENV_PREFIXES

    cfg = settings(AgentSettings, given(**flags), config_file, AGENT_ENV_PREFIXES)
    if not cfg.token:
        from conveyor.errors import ConfigError

        raise ConfigError(
            "no registration token: pass --token or set CONVEYOR_TOKEN "
            "(`conveyor server token` prints it on the server host)",
            key="token",
        )
    setup_logging()
    anyio.run(_start, cfg)


async def _start(cfg: AgentSettings) -> None:
    from conveyor.agent import AgentPool, WorkerOptions
    from conveyor.agent.health import HealthServer
    from conveyor.agent.pool import Lifecycle

    tags = dict(cfg.tags)
    if cfg.queue:
        tags["queue"] = cfg.queue
    assert cfg.token is not None
    pool = AgentPool(
        WorkerOptions(
            endpoint=cfg.endpoint,
            registration_token=cfg.token,
            name=cfg.name,
            tags=tags,
            priority=cfg.priority,
            build_path=cfg.build_path,
            shell=cfg.shell,
            use_pty=not cfg.no_pty,
            ping_interval=cfg.ping_interval,
            ping_mode=cfg.ping_mode,
            cancel_grace=cfg.cancel_grace_period,
            disconnect_after_job=cfg.disconnect_after_job,
            acquire_job=cfg.acquire_job,
            hooks_path=cfg.hooks_path,
            plugins_path=cfg.plugins_path,
            plugins_enabled=not cfg.no_plugins,
            allowed_plugins=cfg.allowed_plugins or "",
            local_hooks_enabled=not cfg.no_local_hooks,
            cancel_signal=signal.Signals[cfg.cancel_signal],
            git_mirrors_path=cfg.git_mirrors_path,
            git_mirrors_lock_timeout=cfg.git_mirrors_lock_timeout,
            max_log_size=cfg.max_log_size,
            redacted_vars=tuple(p.strip() for p in cfg.redacted_vars.split(",") if p.strip()),
        ),
        spawn=1 if cfg.acquire_job else cfg.spawn,
        lifecycle=Lifecycle(
            disconnect_after_idle_timeout=cfg.disconnect_after_idle_timeout,
            disconnect_after_uptime=cfg.disconnect_after_uptime,
            hooks_path=cfg.hooks_path,
            shutdown_hook=cfg.shutdown_hook,
        ),
        locks_dir=cfg.locks_dir,
    )
    ungraceful = False
    async with anyio.create_task_group() as tg:

        async def handle_signals() -> None:
            nonlocal ungraceful
            watched = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
            with anyio.open_signal_receiver(*watched) as signals:
                count = 0
                async for signum in signals:
                    count += 1
                    pool.stop("interrupted")
                    if signum == signal.SIGQUIT or count >= 3:
                        log.warning("%s: stopping at once, killing running jobs", signum.name)
                        ungraceful = True
                        pool.cancel_jobs(grace=0)
                    elif count == 1:
                        log.info("%s: finishing running jobs, then disconnecting", signum.name)
                    else:
                        log.info("%s again: cancelling running jobs", signum.name)
                        pool.cancel_jobs()

        tg.start_soon(handle_signals)
        if cfg.health_check_addr:
            await tg.start(HealthServer(pool, cfg.health_check_addr).run)
        await pool.run()
        tg.cancel_scope.cancel()
    if pool.failures:
        raise ConveyorError("workers stopped by the server: " + "; ".join(pool.failures))
    if ungraceful:
        raise ConveyorError("stopped ungracefully: running jobs were killed")
    log.info("agent stopped (%s)", pool.shutdown_reason)


@agent.command("list")
@client_options
@friendly_errors
def list_agents(config_file: Path | None, **flags: object) -> None:
    """List the agents connected to the server."""
    cfg = settings(ClientSettings, given(**flags), config_file)

    async def main() -> None:
        from conveyor.api_client import ApiClient

        async with ApiClient.connect(cfg.endpoint, cfg.api_token) as api:
            agents = await api.list_agents()
        if not agents:
            click.echo("no agents connected")
            return
        rows = [("NAME", "STATE", "JOB", "TAGS", "HOST", "ID")]
        for a in agents:
            tags = ",".join(f"{k}={v}" for k, v in sorted(a.tags.items()))
            state = f"{a.state} (paused)" if a.paused else a.state
            rows.append((a.name, state, a.current_job_id or "-", tags or "-", a.hostname, a.id))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())

    anyio.run(main)


def _control(agent_id: str, config_file: Path | None, flags: dict[str, object], action: str,
             body: dict[str, object] | None = None) -> None:  # fmt: skip
    cfg = settings(ClientSettings, given(**flags), config_file)

    async def main() -> None:
        from conveyor.api_client import ApiClient

        async with ApiClient.connect(cfg.endpoint, cfg.api_token) as api:
            agent = await api.agent_order(agent_id, action, body)
        click.echo(f"{agent.name}: {action} sent ({'paused' if agent.paused else agent.state})")

    anyio.run(main)


@agent.command()
@click.argument("agent_id")
@client_options
@friendly_errors
def pause(agent_id: str, config_file: Path | None, **flags: object) -> None:
    """Stop giving the agent new jobs (a running job goes on) until resumed."""
    _control(agent_id, config_file, flags, "pause")


@agent.command()
@click.argument("agent_id")
@client_options
@friendly_errors
def resume(agent_id: str, config_file: Path | None, **flags: object) -> None:
    """Give a paused agent jobs again."""
    _control(agent_id, config_file, flags, "resume")


@agent.command()
@click.argument("agent_id")
@click.option("--force", is_flag=True, help="Cancel its running job instead of letting it finish.")
@client_options
@friendly_errors
def stop(agent_id: str, force: bool, config_file: Path | None, **flags: object) -> None:
    """Disconnect the agent once its running job has finished (or, with --force, at once)."""
    _control(agent_id, config_file, flags, "stop", {"force": force})


@agent.command()
@click.argument("agent_id")
@click.option("--spawn", type=int, help="How many workers the agent process runs from now on.")
@click.option("--tags", help="The agent process's tags from now on, as k=v,k2=v2.")
@client_options
@friendly_errors
def update(
    agent_id: str,
    spawn: int | None,
    tags: str | None,
    config_file: Path | None,
    **flags: object,
) -> None:
    """Change an agent process's worker count and tags live, without a restart."""
    from conveyor import protocol as p
    from conveyor.config import parse_tags

    if spawn is None and tags is None:
        raise ConveyorError("nothing to update: give --spawn and/or --tags")
    body = p.AgentUpdate(spawn=spawn, tags=parse_tags(tags) if tags is not None else None)
    cfg = settings(ClientSettings, given(**flags), config_file)

    async def main() -> None:
        from conveyor.api_client import ApiClient

        async with ApiClient.connect(cfg.endpoint, cfg.api_token) as api:
            agent = await api.update_agent(agent_id, body)
        click.echo(f"{agent.name}: update sent")

    anyio.run(main)
