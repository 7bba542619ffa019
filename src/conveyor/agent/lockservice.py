"""The lock service of one agent process: machine-scope locks for its jobs, served on a Unix
socket, without a round trip to the server.

The socket lives in a directory of its own (mode 0700, so only the agent's user can connect)
and every request carries a token. Tokens are per job, not per process: the service knows which
job a request comes from, so the locks a job still holds are let go when it ends (`LockTable`),
and a token that outlives its job (copied into a log, say) opens nothing.

The wire format is in `lockclient`. A request waits as long as its lock does; a client that
goes away while waiting gives the wait up, and a grant whose answer cannot be delivered is let
go at once, so no lock is kept for a caller who never learned of it.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import itertools
import json
import logging
import math
import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Hashable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread
from anyio.abc import SocketListener, SocketStream, TaskGroup, TaskStatus
from anyio.streams.buffered import BufferedByteReceiveStream

from conveyor.agent.hostlocks import HostLocks, default_host_dir
from conveyor.agent.jobapi import OPS as JOB_API_OPS
from conveyor.agent.jobapi import JobApiError, JobState, Redact, perform
from conveyor.agent.lockclient import MAX_KEY, MAX_MESSAGE, OPS, SOCKET_ENV, TOKEN_ENV, Op, encode
from conveyor.agent.locks import LockError, LockTable
from conveyor.errors import ConveyorError

log = logging.getLogger("conveyor.agent")

SOCKET_NAME = "locks.sock"
# Unix socket paths are limited to about 104 bytes (108 on Linux, 104 on macOS).
_MAX_SOCKET_PATH = 100
# A client sends its request as soon as it connects; one that does not is not ours.
_REQUEST_DEADLINE_S = 10.0


@dataclass(frozen=True)
class _Request:
    op: Op
    key: str
    lock_token: str
    max_wait: float | None


class _BadRequest(Exception):
    pass


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate, which JSON can carry
        return False
    return True


def _parse(line: bytes) -> tuple[str, _Request]:
    """(token, request) from one request line."""
    try:
        data = json.loads(line)
    except ValueError:
        raise _BadRequest("the request is not JSON") from None
    if not isinstance(data, dict):
        raise _BadRequest("the request is not a JSON object")
    token, op, key = data.get("token"), data.get("op"), data.get("key")
    lock_token, max_wait = data.get("lock_token", ""), data.get("max_wait")
    if not isinstance(token, str):
        raise _BadRequest("refused: the request has no token")
    if op not in OPS:
        raise _BadRequest(f"unknown operation {op!r}")
    if not isinstance(key, str) or not key or len(key) > MAX_KEY or not _encodable(key):
        raise _BadRequest(f"a lock key is a string of 1 to {MAX_KEY} characters")
    if not isinstance(lock_token, str):
        raise _BadRequest("the lock token is not a string")
    if max_wait is not None and (
        isinstance(max_wait, bool)
        or not isinstance(max_wait, int | float)
        or not math.isfinite(max_wait)
        or max_wait <= 0
    ):
        raise _BadRequest("max_wait is a number of seconds > 0, or null for no limit")
    return token, _Request(op, key, lock_token, float(max_wait) if max_wait is not None else None)


@asynccontextmanager
async def _private_socket() -> AsyncIterator[Path]:
    """A socket path in a new directory only this user can enter, removed afterwards."""
    private = Path(
        await anyio.to_thread.run_sync(functools.partial(tempfile.mkdtemp, prefix="conveyor-"))
    )
    try:
        path = private / SOCKET_NAME
        if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
            raise ConveyorError(
                f"the lock service's socket path {path} is too long for a Unix socket: "
                "set TMPDIR to a shorter directory"
            )
        yield path
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(
                functools.partial(shutil.rmtree, private, ignore_errors=True)
            )


def _listen(path: Path) -> socket.socket:
    """The listening socket, made here rather than by `anyio.create_unix_listener`, which looks
    for a stale socket file on the event loop (ours is a new directory: there is none)."""
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listening.bind(os.fspath(path))
        path.chmod(0o600)
        listening.listen(socket.SOMAXCONN)
        listening.setblocking(False)
    except BaseException:
        listening.close()
        raise
    return listening


class LockService:
    """Run it with `task_group.start(service.run)`; it serves until cancelled."""

    def __init__(self, host_dir: Path | None = None):
        # None: `$TMPDIR/conveyor-locks-<uid>`, shared with every agent of this user.
        self.host_dir = host_dir
        self.socket_path: Path | None = None
        self._table: LockTable | None = None
        self._tg: TaskGroup | None = None
        self._owners: dict[str, int] = {}  # job token → owner
        self._jobs: dict[Hashable, tuple[int, str]] = {}  # worker → (owner, token)
        self._states: dict[int, JobState] = {}  # owner → its job API state
        self._serials = itertools.count(1)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        host_dir = self.host_dir
        if host_dir is None:
            host_dir = await anyio.to_thread.run_sync(default_host_dir)
        async with _private_socket() as socket_path, HostLocks.open(host_dir) as host:
            table = LockTable(host)
            try:
                await self._serve(socket_path, table, task_status)
            finally:
                # Every request has ended: nothing can take a key any more.
                await table.shutdown()

    async def _serve(
        self, socket_path: Path, table: LockTable, task_status: TaskStatus[None]
    ) -> None:
        listening = await anyio.to_thread.run_sync(_listen, socket_path)
        async with (
            await SocketListener.from_socket(listening) as listener,
            anyio.create_task_group() as tg,
        ):
            self._table, self._tg, self.socket_path = table, tg, socket_path
            log.info("serving machine-scope locks of %s on %s", table.host_dir, socket_path)
            try:
                task_status.started()
                await listener.serve(self._handle, task_group=tg)
            finally:
                self._table = self._tg = self.socket_path = None
                self._owners.clear()
                self._jobs.clear()
                self._states.clear()

    def open_job(self, worker: Hashable) -> dict[str, str]:
        """A job starts on `worker`: the variables that give it the locks (none while the
        service is not running)."""
        self.close_job(worker)
        if self._table is None or self.socket_path is None:
            return {}
        owner, token = next(self._serials), secrets.token_urlsafe(32)
        self._owners[token] = owner
        self._jobs[worker] = (owner, token)
        self._states[owner] = JobState()
        self._table.open(owner)
        return {SOCKET_ENV: str(self.socket_path), TOKEN_ENV: token}

    def attach(
        self,
        worker: Hashable,
        env: Mapping[str, str],
        redact: Redact,
        redacted_vars: tuple[str, ...],
    ) -> None:
        """The job on `worker` is about to run with `env`; `redact` adds to its redactor the
        values of variables that match `redacted_vars` as they appear."""
        job = self._jobs.get(worker)
        if job is not None:
            self._states[job[0]] = JobState(dict(env), redact, redacted_vars)

    def close_job(self, worker: Hashable) -> None:
        """The job on `worker` has ended: its token stops working, its keys are let go."""
        job = self._jobs.pop(worker, None)
        if job is None:
            return
        owner, token = job
        self._owners.pop(token, None)
        self._states.pop(owner, None)
        if self._tg is not None and self._table is not None:
            self._tg.start_soon(self._table.close, owner)

    def _owner(self, token: str) -> int | None:
        for known, owner in self._owners.items():
            # JSON may carry lone surrogates; they must not make a bad token an error.
            if hmac.compare_digest(known.encode(), token.encode("utf-8", "surrogatepass")):
                return owner
        return None

    async def _handle(self, stream: SocketStream) -> None:
        async with stream:
            try:
                await self._answer(stream)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream):
                pass  # the client went away
            except Exception:
                # One request going wrong must not stop the locks of every other job.
                log.exception("the lock service could not answer a request")

    async def _answer(self, stream: SocketStream) -> None:
        received = BufferedByteReceiveStream(stream)
        try:
            with anyio.fail_after(_REQUEST_DEADLINE_S):
                line = await received.receive_until(b"\n", MAX_MESSAGE)
            if await self._job_api(stream, line):
                return
            token, request = _parse(line)
        except (TimeoutError, anyio.IncompleteRead):
            return
        except (_BadRequest, anyio.DelimiterNotFound) as exc:
            message = str(exc) if isinstance(exc, _BadRequest) else "the request is too long"
            await stream.send(encode({"ok": False, "error": message}))
            return
        owner = self._owner(token)
        table = self._table
        if owner is None or table is None:
            await stream.send(
                encode({"ok": False, "error": "refused: the token is not that of a running job"})
            )
            return
        answered = granted = False
        reply: dict[str, object] = {}
        async with anyio.create_task_group() as tg:

            async def give_up_when_the_client_goes() -> None:
                # A client sends nothing after its request: the next thing is the end.
                with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                    while True:
                        await received.receive()
                tg.cancel_scope.cancel()

            tg.start_soon(give_up_when_the_client_goes)
            try:
                value = await self._perform(table, request, owner)
                reply = {"ok": True, "value": value}
                granted = request.op == "acquire" or value == "do"
            except LockError as exc:
                reply = {"ok": False, "error": str(exc)}
            answered = True
            tg.cancel_scope.cancel()
        if not answered:
            return
        try:
            await stream.send(encode(reply))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            if granted:
                await table.drop(request.key, owner)
            raise

    async def _job_api(self, stream: SocketStream, line: bytes) -> bool:
        """Answer `line` if it is a job API request (see `jobapi`); False if it is not one."""
        try:
            data = json.loads(line)
        except ValueError:
            return False
        if not isinstance(data, dict) or data.get("op") not in JOB_API_OPS:
            return False
        token = data.get("token")
        owner = self._owner(token) if isinstance(token, str) else None
        state = self._states.get(owner) if owner is not None else None
        if state is None:
            reply = {"ok": False, "error": "refused: the token is not that of a running job"}
        else:
            try:
                reply = {"ok": True, "value": perform(state, data)}
            except JobApiError as exc:
                reply = {"ok": False, "error": str(exc)}
        await stream.send(encode(reply))
        return True

    @staticmethod
    async def _perform(table: LockTable, request: _Request, owner: int) -> str:
        key = request.key
        if request.op == "acquire":
            return await table.acquire(key, owner, request.max_wait)
        if request.op == "release":
            await table.release(key, request.lock_token)
            return ""
        if request.op == "get":
            return await table.get(key)
        if request.op == "do":
            return await table.do(key, owner, request.max_wait)
        await table.done(key, owner)
        return ""
