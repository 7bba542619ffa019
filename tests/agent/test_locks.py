"""The lock service of an agent process: acquire/release, get, do/done, tokens, and two services
on one host directory (two agent processes) excluding each other. Real services on real Unix
sockets and real flocks; jobs are opened and closed as the pool does it."""

from __future__ import annotations

import functools
import os
import shutil
import signal
import stat
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from conveyor.agent.lockclient import SOCKET_ENV, TOKEN_ENV, LockClient, encode
from conveyor.agent.lockservice import LockService
from conveyor.errors import ConveyorError

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def serving(host_dir: Path) -> AsyncIterator[LockService]:
    service = LockService(host_dir)
    async with anyio.create_task_group() as tg:
        await tg.start(service.run)
        try:
            yield service
        finally:
            tg.cancel_scope.cancel()


def job(service: LockService, worker: object) -> LockClient:
    """A job starting on `worker`, as the pool opens it, and its client."""
    return LockClient.from_env(service.open_job(worker), "test")


async def test_acquire_get_release(tmp_path: Path) -> None:
    async with serving(tmp_path / "locks") as service:
        client = job(service, 1)
        assert await client.get("db") == ""
        token = await client.acquire("db")
        assert token
        assert await client.get("db") == token
        await client.release("db", token)
        assert await client.get("db") == ""
        # Free again: taken at once.
        with anyio.fail_after(5):
            await client.release("db", await client.acquire("db"))


async def test_a_held_lock_makes_others_wait_until_released(tmp_path: Path) -> None:
    async with serving(tmp_path / "locks") as service:
        first, second = job(service, 1), job(service, 2)
        token = await first.acquire("db")
        with pytest.raises(ConveyorError, match=r"timed out after 0\.3s waiting for lock 'db'"):
            await second.acquire("db", max_wait=0.3)
        got: list[str] = []
        async with anyio.create_task_group() as tg:

            async def wait_for_it() -> None:
                got.append(await second.acquire("db"))

            tg.start_soon(wait_for_it)
            await anyio.wait_all_tasks_blocked()
            assert got == []
            await first.release("db", token)
        assert got and got[0] != token
        assert await first.get("db") == got[0]


async def test_release_with_the_wrong_token_is_refused(tmp_path: Path) -> None:
    async with serving(tmp_path / "locks") as service:
        client = job(service, 1)
        with pytest.raises(ConveyorError, match=r"^lock 'db' is not held$"):
            await client.release("db", "whatever")
        token = await client.acquire("db")
        for wrong in ("not-" + token, "ünïcode", "\ud800"):
            with pytest.raises(ConveyorError, match=r"^lock 'db' is held with another token$"):
                await client.release("db", wrong)
        assert await client.get("db") == token
        await client.release("db", token)
        with pytest.raises(ConveyorError, match="is not held"):
            await client.release("db", token)


async def test_requests_without_a_running_jobs_token_are_refused(tmp_path: Path) -> None:
    async with serving(tmp_path / "locks") as service:
        assert service.socket_path is not None
        stranger = LockClient(str(service.socket_path), "guessed")
        with pytest.raises(ConveyorError, match="refused: the token is not that of a running job"):
            await stranger.get("db")
        env = service.open_job(1)
        client = LockClient.from_env(env, "test")
        await client.get("db")
        service.close_job(1)
        with pytest.raises(ConveyorError, match="refused"):
            await client.get("db")
        # Each job gets a token of its own.
        assert service.open_job(1)[TOKEN_ENV] != env[TOKEN_ENV]


async def test_the_socket_is_private(tmp_path: Path) -> None:
    async with serving(tmp_path / "locks") as service:
        socket_path = service.socket_path
        assert socket_path is not None
        assert stat.S_IMODE(socket_path.parent.stat().st_mode) == 0o700
        assert stat.S_ISSOCK(socket_path.stat().st_mode)
        assert stat.S_IMODE((tmp_path / "locks").stat().st_mode) == 0o700
    # Gone with the service.
    assert not socket_path.parent.exists()


async def test_a_lock_directory_other_users_can_enter_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    with pytest.raises(BaseException) as info:
        async with serving(shared):
            pass
    assert "is open to other users (mode 0755)" in str(_leaf(info.value))


async def test_bad_requests_get_an_answer(tmp_path: Path) -> None:
    async with serving(tmp_path / "locks") as service:
        assert service.socket_path is not None
        token = service.open_job(1)[TOKEN_ENV]
        for request, error in [
            (b"not json\n", "not JSON"),
            (encode({"token": token, "op": "steal", "key": "db"}), "unknown operation 'steal'"),
            (encode({"token": token, "op": "get", "key": ""}), "a lock key is a string"),
            (b'{"token": "t", "op": "get", "key": "\\ud800"}\n', "a lock key is a string"),
            (encode({"token": token, "op": "do", "key": "k", "max_wait": -1}), "max_wait is"),
        ]:
            async with await anyio.connect_unix(service.socket_path) as stream:
                await stream.send(request)
                reply = await BufferedByteReceiveStream(stream).receive_until(b"\n", 65536)
            assert b'"ok":false' in reply and error.encode() in reply, (request, reply)


async def test_do_once(tmp_path: Path) -> None:
    """The first `do` is told "do"; others wait until `done`, then are told "done"."""
    async with serving(tmp_path / "locks") as service:
        doer, waiter, late = job(service, 1), job(service, 2), job(service, 3)
        assert await doer.do("setup") == "do"
        assert await doer.get("setup") == "doing"
        with pytest.raises(ConveyorError, match=r"timed out after 0\.2s"):
            await waiter.do("setup", max_wait=0.2)
        with pytest.raises(ConveyorError, match="being done by another job"):
            await waiter.done("setup")
        told: list[str] = []
        async with anyio.create_task_group() as tg:

            async def wait_for_it() -> None:
                told.append(await waiter.do("setup"))

            tg.start_soon(wait_for_it)
            await anyio.wait_all_tasks_blocked()
            assert told == []
            await doer.done("setup")
        assert told == ["done"]
        assert await late.do("setup") == "done"
        assert await late.get("setup") == "done"
        with pytest.raises(ConveyorError, match="already done"):
            await doer.done("setup")
        with pytest.raises(ConveyorError, match="no work is in progress for 'other'"):
            await doer.done("other")
        with pytest.raises(ConveyorError, match="whose work is done"):
            await late.acquire("setup")


async def test_a_job_that_ends_lets_its_locks_go(tmp_path: Path) -> None:
    async with serving(tmp_path / "locks") as service:
        holder, doer, other = job(service, 1), job(service, 2), job(service, 3)
        await holder.acquire("db")
        assert await doer.do("setup") == "do"
        async with anyio.create_task_group() as tg:

            async def other_takes_both() -> None:
                await other.release("db", await other.acquire("db"))
                # The work was left undone: the next caller does it.
                assert await other.do("setup") == "do"
                await other.done("setup")

            tg.start_soon(other_takes_both)
            await anyio.wait_all_tasks_blocked()
            service.close_job(1)
            service.close_job(2)
        assert await other.get("setup") == "done"


async def test_a_client_that_goes_away_while_waiting_gets_nothing(tmp_path: Path) -> None:
    async with serving(tmp_path / "locks") as service:
        assert service.socket_path is not None
        holder, other = job(service, 1), job(service, 2)
        token = await holder.acquire("db")
        gone = service.open_job(3)[TOKEN_ENV]
        # A caller that asks, then leaves (Ctrl-C on `conveyor lock acquire`, say).
        async with await anyio.connect_unix(service.socket_path) as stream:
            await stream.send(encode({"token": gone, "op": "acquire", "key": "db"}))
            await anyio.wait_all_tasks_blocked()
        await holder.release("db", token)
        with anyio.fail_after(5):
            await other.release("db", await other.acquire("db"))


async def test_two_services_on_one_host_directory_exclude_each_other(tmp_path: Path) -> None:
    """Two agent processes on one host: the lock is the host's, not the process's."""
    host = tmp_path / "locks"
    async with serving(host) as one, serving(host) as two:
        a, b = job(one, 1), job(two, 1)
        token = await a.acquire("db")
        assert await b.get("db") == token
        with pytest.raises(ConveyorError, match="timed out"):
            await b.acquire("db", max_wait=0.3)
        with pytest.raises(ConveyorError, match="held by a job of another agent process"):
            await b.release("db", token)
        async with anyio.create_task_group() as tg:
            tg.start_soon(b.acquire, "db")
            await anyio.wait_all_tasks_blocked()
            await a.release("db", token)
        assert await a.get("db") not in ("", token)

        assert await a.do("setup") == "do"
        told: list[str] = []
        async with anyio.create_task_group() as tg:

            async def wait_for_it() -> None:
                told.append(await b.do("setup"))

            tg.start_soon(wait_for_it)
            await anyio.wait_all_tasks_blocked()
            assert told == []
            await a.done("setup")
        assert told == ["done"]


async def test_a_waiter_that_gives_up_does_not_keep_the_lock_of_another_host_process(
    tmp_path: Path,
) -> None:
    host = tmp_path / "locks"
    async with serving(host) as one, serving(host) as two:
        a, b, c = job(one, 1), job(two, 1), job(two, 2)
        token = await a.acquire("db")
        # b's wait for the other process's flock is given up...
        with pytest.raises(ConveyorError, match="timed out"):
            await b.acquire("db", max_wait=0.2)
        await a.release("db", token)
        # ...so the flock, granted to that wait later, is let go for the next one.
        with anyio.fail_after(5):
            await c.release("db", await c.acquire("db"))
            await a.release("db", await a.acquire("db"))


async def test_done_lasts_while_agents_run_on_the_host(tmp_path: Path) -> None:
    host = tmp_path / "locks"
    async with serving(host) as staying:
        async with serving(host) as first:
            client = job(first, 1)
            assert await client.do("setup") == "do"
            await client.done("setup")
        # Another agent process still runs: the work stays done.
        async with serving(host) as second:
            assert await job(second, 1).do("setup") == "done"
        assert await job(staying, 1).do("setup") == "done"
    # The last one stopped: a new life of the host's agents starts with nothing done...
    await anyio.Path(host / "notes.txt").write_text("mine")
    async with serving(host) as fresh:
        assert await job(fresh, 1).do("setup") == "do"
    # ...and only the lock files were removed.
    assert await anyio.Path(host / "notes.txt").read_text() == "mine"


HOLDER = """
import sys, anyio
from pathlib import Path
from conveyor.agent.lockclient import LockClient
from conveyor.agent.lockservice import LockService

async def main() -> None:
    service = LockService(Path(sys.argv[1]))
    async with anyio.create_task_group() as tg:
        await tg.start(service.run)
        client = LockClient.from_env(service.open_job(1), "holder")
        print(await client.do("setup"), await client.acquire("db"), flush=True)
        await anyio.sleep_forever()

anyio.run(main)
"""


@pytest.fixture
async def short_tmpdir() -> AsyncIterator[Path]:
    """A TMPDIR for a process that will be killed (and so leave its socket directory behind),
    short enough for a Unix socket path."""
    path = Path(await anyio.to_thread.run_sync(functools.partial(tempfile.mkdtemp, prefix="cv-")))
    yield path
    await anyio.to_thread.run_sync(shutil.rmtree, path)


async def test_an_agent_process_that_dies_leaves_no_lock_behind(
    tmp_path: Path, short_tmpdir: Path
) -> None:
    """The kernel drops a dead process's flocks: its lock is free, its work undone."""
    host = tmp_path / "locks"
    async with await anyio.open_process(
        [sys.executable, "-c", HOLDER, str(host)],
        stderr=None,
        env={**os.environ, "TMPDIR": str(short_tmpdir)},
    ) as process:
        assert process.stdout is not None
        with anyio.fail_after(30):
            line = await BufferedByteReceiveStream(process.stdout).receive_until(b"\n", 4096)
        told, token = line.decode().split()
        assert told == "do"
        async with serving(host) as service:
            client = job(service, 1)
            assert await client.get("db") == token
            assert await client.get("setup") == "doing"
            process.send_signal(signal.SIGKILL)
            await process.wait()
            assert await client.get("db") == ""
            assert await client.get("setup") == ""
            with anyio.fail_after(5):
                await client.release("db", await client.acquire("db"))
                assert await client.do("setup") == "do"
                await client.done("setup")


def test_outside_a_job_the_client_says_so() -> None:
    with pytest.raises(ConveyorError) as info:
        LockClient.from_env({"PATH": os.environ.get("PATH", "")}, "conveyor lock acquire")
    assert str(info.value) == (
        "`conveyor lock acquire` works only inside a job run by a Conveyor agent: "
        f"{SOCKET_ENV} and {TOKEN_ENV} are not set (the agent sets them for the job's command)"
    )


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
