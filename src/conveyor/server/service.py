"""Run the server: open storage, make sure tokens exist, serve HTTP until cancelled."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread
import uvicorn
from anyio.abc import TaskStatus

from conveyor.config import ServerSettings, parse_listen
from conveyor.errors import AuthError, ConfigError
from conveyor.server.app import create_app
from conveyor.server.artifact_store import FileArtifactStore
from conveyor.server.context import ServerContext
from conveyor.server.reaper import reaper_loop
from conveyor.storage import Store, open_database
from conveyor.storage.checkpoint import checkpoint_loop
from conveyor.storage.engine import sqlite_url

log = logging.getLogger("conveyor.server")

TOKEN_FILES = {"registration": "registration-token", "api": "api-token"}
_KEEP_ALIVE_S = 30


@dataclass
class ServerHandle:
    """What a started server tells its starter."""

    url: str
    registration_token: str | None
    api_token: str | None
    created_tokens: bool
    ctx: ServerContext


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: our caller owns signals and shutdown."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(listen: str) -> socket.socket:
    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        raise ConfigError(f"listen address {exc}", key="listen") from None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say they are TCP,
    # and accepted connections inherit it. Without it every small answer waits for a delayed
    # ACK (~40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {listen}: {exc.strerror}", key="listen") from None
    # Listening before uvicorn starts means clients may connect at once: the kernel queues them.
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _write_secret(path: Path, text: str) -> None:
    """Create the file readable by its owner only from the first byte on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


async def ensure_tokens(store: Store, data_dir: Path) -> tuple[dict[str, str | None], bool]:
    """The registration and API tokens, created on first start and kept in the data dir.

    The database holds only their hashes. A token file found without its hash (a new database
    under an old data dir) is registered again. Where the database has tokens but this data dir
    has no file (another replica made them), the value is unknown here: None.
    """
    values: dict[str, str | None] = {}
    created = False
    for kind, filename in TOKEN_FILES.items():
        path = anyio.Path(data_dir / filename)
        async with store.transaction() as tx:
            if await path.exists():
                value = (await path.read_text()).strip()
                try:
                    await tx.authenticate(value, kind)
                except AuthError:
                    await tx.add_token(kind, value, description=f"from {path}")
            elif await tx.count_tokens(kind) == 0:
                value = await tx.create_token(kind, description="created at first start")
                await anyio.to_thread.run_sync(_write_secret, Path(path), value + "\n")
                created = True
            else:
                value = None
        values[kind] = value
    return values, created


async def run_server(
    settings: ServerSettings,
    *,
    ping_interval: int = 10,
    match_any_agent: bool = False,
    task_status: TaskStatus[ServerHandle] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; `task_status.started` gets the handle once requests are accepted."""
    data_dir = settings.data_dir
    await anyio.Path(data_dir).mkdir(parents=True, exist_ok=True)
    url = settings.database_url or sqlite_url(data_dir / "conveyor.db")
    sock = bind(settings.listen)
    try:
        db = await open_database(url)
    except BaseException:
        sock.close()
        raise
    store = Store(db)
    try:
        host, port = sock.getsockname()[:2]
        shown_host = f"[{host}]" if ":" in host else host
        base_url = f"http://{shown_host}:{port}"
        ctx = ServerContext(
            store=store,
            ping_interval=ping_interval,
            # Three beats fit in the lost timeout, so one lost request does not lose an agent.
            heartbeat_interval=max(1, min(60, settings.agent_lost_timeout // 3)),
            chunk_max_size=settings.chunk_max_size,
            artifacts=FileArtifactStore(data_dir / "artifacts"),
            artifact_max_size=settings.artifact_max_size,
            external_url=settings.external_url or base_url,
            match_any_agent=match_any_agent,
        )
        tokens, created = await ensure_tokens(ctx.store, data_dir)
        config = uvicorn.Config(
            create_app(ctx),
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=3,
            log_level=settings.log_level,
            # Idle connections are kept longer than clients keep them (httpx: 5 s), so the
            # client is always the one to close: a server closing an idle connection just as
            # a client reuses it makes that request fail ("Server disconnected without sending
            # a response").
            timeout_keep_alive=_KEEP_ALIVE_S,
        )
        server = _EmbeddedUvicorn(config)

        async def serve() -> None:
            # Shielded so that shutdown is uvicorn's own, graceful one, begun by should_exit.
            with anyio.CancelScope(shield=True):
                await server.serve(sockets=[sock])

        async with anyio.create_task_group() as tg:
            tg.start_soon(serve)
            tg.start_soon(reaper_loop, ctx, settings.agent_lost_timeout)
            tg.start_soon(ctx.streams.run)
            if (db_path := db.sqlite_path) is not None:
                tg.start_soon(checkpoint_loop, db_path)
            task_status.started(
                ServerHandle(
                    url=base_url,
                    registration_token=tokens["registration"],
                    api_token=tokens["api"],
                    created_tokens=created,
                    ctx=ctx,
                )
            )
            try:
                await anyio.sleep_forever()
            finally:
                ctx.stopping.set()
                ctx.streams.close_all()
                server.should_exit = True
    finally:
        sock.close()
        with anyio.CancelScope(shield=True):
            await store.close()
