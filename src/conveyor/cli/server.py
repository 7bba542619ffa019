"""`conveyor server` and `conveyor server token`."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import anyio
import click

from conveyor.cli.common import config_option, friendly_errors, given, settings, setup_logging
from conveyor.config import ServerSettings
from conveyor.errors import ConveyorError


@click.group(invoke_without_command=True)
@click.option("--listen", help="HOST:PORT to serve on.  [default: 127.0.0.1:8080]")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Where the SQLite database, the token files and the artifacts live.  "
    "[default: ~/.conveyor/server]",
)
@click.option(
    "--database-url",
    help="postgresql://user@host/db to use PostgreSQL instead of SQLite in the data dir.",
)
@click.option("--external-url", help="The URL agents and users reach this server at.")
@click.option(
    "--agent-lost-timeout",
    type=int,
    help="Seconds without a heartbeat before an agent is lost.  [default: 180]",
)
@click.option(
    "--chunk-max-size",
    type=int,
    help="Largest log chunk agents may send, in bytes.  [default: 1048576]",
)
@click.option(
    "--artifact-max-size",
    type=int,
    help="Largest artifact jobs may upload, in bytes.  [default: 5368709120 (5 GiB)]",
)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
@config_option
@click.pass_context
@friendly_errors
def server(ctx: click.Context, /, config_file: Path | None, **flags: object) -> None:
    """Run the dispatch server: agent API, REST API and OpenAPI schema at /openapi.json.

    On first start it creates an agent registration token and an API token, prints them, and
    keeps them in the data dir (`conveyor server token` prints them again). Migrations are
    applied at every start.
    """
    ctx.ensure_object(dict)
    ctx.obj["flags"] = given(**flags)
    ctx.obj["config_file"] = config_file
    if ctx.invoked_subcommand is not None:
        return
    cfg = settings(ServerSettings, given(**flags), config_file)
    setup_logging(cfg.log_level)
    anyio.run(_serve, cfg)


async def _serve(cfg: ServerSettings) -> None:
    from conveyor.server.service import ServerHandle, run_server

    async with anyio.create_task_group() as tg:
        handle: ServerHandle = await tg.start(run_server, cfg)
        click.echo(f"Conveyor server listening on {handle.url}")
        if handle.created_tokens:
            click.echo(f"Agent registration token: {handle.registration_token}")
            click.echo(f"API token:                {handle.api_token}")
            click.echo(f"(kept in {cfg.data_dir}; `conveyor server token` prints them again)")
        else:
            click.echo("Tokens: `conveyor server token` (registration) / `--api` (API token)")
        click.echo(f"Start an agent:  conveyor agent start --endpoint {handle.url} --token …")
        sys.stdout.flush()
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                click.echo("Shutting down", err=True)
                break
        tg.cancel_scope.cancel()


@server.command()
@click.option("--api", is_flag=True, help="Print the API token instead of the registration token.")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="The server's data dir.  [default: ~/.conveyor/server]",
)
@config_option
@click.pass_context
@friendly_errors
def token(
    ctx: click.Context, /, api: bool, data_dir: Path | None, config_file: Path | None
) -> None:
    """Print the agent registration token (or, with --api, the API token) from the data dir."""
    from conveyor.server.service import TOKEN_FILES

    flags = {**ctx.obj["flags"], **given(data_dir=data_dir)}
    cfg = settings(ServerSettings, flags, config_file or ctx.obj["config_file"])
    path = cfg.data_dir / TOKEN_FILES["api" if api else "registration"]
    if not path.is_file():
        raise ConveyorError(
            f"no token file at {path}: start `conveyor server` with this data dir first"
        )
    click.echo(path.read_text().strip())
