"""Spawn a command in a PTY (or on a pipe) in a session of its own, and collect its output.

The child is a session leader, so its process group holds everything it starts that does not
move itself elsewhere; cancelling sends the cancel signal to that group, waits out the grace
period, then SIGKILLs the group.

A process can leave the group (setsid) and its parent can exit (a double-forked daemon), so
cancelling also kills, by /proc, every process below the command and every process that still
carries the job's id in its environment (`JOB_MARKER`, which the agent sets for every job):
that finds a daemon re-parented to init too. A process that both left and rewrote its
environment is out of reach here; the job executor (`bootstrap`) closes that gap: it is a child
subreaper, so such a process is re-parented to it and stays below the command's session leader.

Output ends when every holder of the terminal has closed it (EIO on the PTY, EOF on a pipe).
A process that outlives the command and keeps the terminal open would hold the job forever,
so once the command has exited, output is read until the terminal has been quiet for
`DRAIN_IDLE_S`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pty
import signal
import struct
import termios
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread

from conveyor.runner.relay import RELAY_AFTER, Relay, widen_pipe

READ_SIZE = 64 * 1024
BATCH_SIZE = 256 * 1024
JOB_MARKER = "CONVEYOR_JOB_ID"
"""The variable that tells a job's processes from any other, wherever they moved."""
DRAIN_IDLE_S = 0.2
COALESCE_BELOW = 64 * 1024
COALESCE_S = 0.002
"""A wide pipe (its writer goes on meanwhile) that gave less than COALESCE_BELOW is read again
COALESCE_S later rather than at once: a batch costs about the same whatever its size, and a
busy job's output would otherwise go in many small ones."""
# A terminal the size Buildkite gives its jobs, so tools that format for width agree.
PTY_COLUMNS, PTY_ROWS = 160, 100


@dataclass(frozen=True)
class ProcessExit:
    """How the process ended. `status` follows the shell: 128+N when killed by signal N."""

    status: int
    signal: str | None = None


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"SIG{signum}"


def _open_terminal(use_pty: bool) -> tuple[int, int]:
    """(read end, write end) for the child's output."""
    if use_pty:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", PTY_ROWS, PTY_COLUMNS, 0, 0))
    else:
        master, slave = os.pipe()
    os.set_blocking(master, False)
    return master, slave


def _kill_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


class _Pump:
    """Copies the terminal's output to `on_output` until every writer has closed it.

    Once the command has exited, a writer that stays (a leftover background process) holds the
    terminal open forever: from then on reading ends after `DRAIN_IDLE_S` of quiet. A busy
    PTY (past `RELAY_AFTER`) is handed to a relay (see `runner.relay`), whose pipe is read
    from then on; a busy pipe is widened.
    """

    def __init__(self, fd: int, on_output: Callable[[bytes], Awaitable[None]], *, use_pty: bool):
        self._fd = fd
        self._on_output = on_output
        self._exited = False
        self._waiting: anyio.CancelScope | None = None
        # A PTY gives at most a few KiB a read; a pipe gives as much as is asked for.
        self._read_size = READ_SIZE if use_pty else BATCH_SIZE
        self._master = fd if use_pty else None
        self._relay: Relay | None = None
        self._relayed = False  # a relay was started once: never again for this run
        self._wide = False  # reading a wide pipe: the writer goes on while we work
        self._read_directly = 0  # bytes read before the relay or the wide pipe

    def command_exited(self) -> None:
        self._exited = True
        if self._waiting is not None:
            self._waiting.cancel()  # re-wait, now with the quiet deadline

    async def run(self) -> None:
        try:
            await self._copy()
        finally:
            if self._relay is not None:
                with anyio.CancelScope(shield=True):
                    await self._relay.aclose()

    async def _copy(self) -> None:
        while True:
            if self._exited:
                with anyio.move_on_after(DRAIN_IDLE_S) as idle:
                    await anyio.wait_readable(self._fd)
                if idle.cancelled_caught:
                    if self._relay is None:
                        return
                    if await self._relay.busy():
                        continue  # late, not quiet: what it passes on is still output
                    # It may have passed its last piece on while we looked.
                    data, ended = self._read_available()
                    if not data and not ended:
                        return
                    await self._take(data, ended)
                    continue
            else:
                with anyio.CancelScope() as self._waiting:
                    await anyio.wait_readable(self._fd)
                self._waiting = None
            data, ended = self._read_available()
            if not await self._take(data, ended):
                return
            if ended:
                continue
            if self._wide and len(data) < COALESCE_BELOW and not self._exited:
                await anyio.sleep(COALESCE_S)
            if not self._wide and not self._relayed and not self._exited:
                self._read_directly += len(data)
                if self._read_directly >= RELAY_AFTER:
                    await self._go_wide()

    async def _take(self, data: bytes, ended: bool) -> bool:
        """Pass `data` on; False when the output has ended (a relay's pipe ending is not that
        yet: the terminal is read directly to its end)."""
        if data:
            await self._on_output(data)
        if not ended:
            return True
        if self._relay is None:
            return False
        await self._end_relay()
        return True

    async def _go_wide(self) -> None:
        """The output is busy: relay the PTY, or widen the pipe."""
        if self._master is None:
            widen_pipe(self._fd)
            self._wide = True
            return
        self._relayed = True
        # In a worker thread: starting a process waits on it (its exec).
        self._relay = await anyio.to_thread.run_sync(Relay.start, self._master)
        if self._relay is not None:
            self._fd, self._read_size, self._wide = self._relay.fd, BATCH_SIZE, True

    async def _end_relay(self) -> None:
        """The relay's pipe ended: `cat` is gone. Normally because the terminal ended; if it
        was killed, the terminal still holds output, so it is read directly to its end (when
        it has ended, the first read says so)."""
        assert self._relay is not None and self._master is not None
        relay, self._relay = self._relay, None
        await relay.aclose()
        self._fd, self._read_size, self._wide = self._master, READ_SIZE, False

    def _read_available(self) -> tuple[bytes, bool]:
        """Everything the terminal holds now, up to BATCH_SIZE, and whether it has ended.

        A PTY hands out at most a few KiB per read; passing each piece on alone costs far
        more (a wait, the log's lock, a cancel scope) than the read itself, so a busy
        terminal is drained in one go."""
        pieces: list[bytes] = []
        size = 0
        while size < BATCH_SIZE:
            try:
                piece = os.read(self._fd, self._read_size)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EIO:  # the PTY's last writer closed it: normal end
                    return b"".join(pieces), True
                raise
            if not piece:
                return b"".join(pieces), True
            pieces.append(piece)
            size += len(piece)
        return b"".join(pieces), False


DRAIN_AFTER_STOP_S = 2.0


async def run_process(
    argv: list[str],
    *,
    env: dict[str, str],
    cwd: Path,
    on_output: Callable[[bytes], Awaitable[None]],
    use_pty: bool = True,
    cancel_signal: int = signal.SIGTERM,
    cancel_grace: float = 10.0,
    kill_now: anyio.Event | None = None,
) -> ProcessExit:
    """Run `argv` to its end. If cancelled, stop its process group first, then re-raise.
    Once `kill_now` is set, the grace is over: SIGKILL follows at once."""
    job_id = env.get(JOB_MARKER)
    marker = f"{JOB_MARKER}={job_id}".encode() if job_id else None
    read_fd, write_fd = _open_terminal(use_pty)
    try:
        stdin: int = write_fd if use_pty else os.open(os.devnull, os.O_RDONLY)
        try:
            process = await anyio.open_process(
                argv,
                stdin=stdin,
                stdout=write_fd,
                stderr=write_fd,
                cwd=cwd,
                env=env,
                start_new_session=True,
            )
        finally:
            if stdin != write_fd:
                os.close(stdin)
            # Only the child may hold the write end, or the end of output is never seen.
            os.close(write_fd)
        reader = _Pump(read_fd, on_output, use_pty=use_pty)
        # Shielded: output written while the command is being stopped (trap handlers, cleanup)
        # still reaches the log; after a stop the reader gets a deadline of its own.
        pump_scope = anyio.CancelScope(shield=True)

        async def pump() -> None:
            with pump_scope:
                await reader.run()

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(pump)
                try:
                    returncode = await process.wait()
                except BaseException:
                    with anyio.CancelScope(shield=True):
                        await _stop(process, cancel_signal, cancel_grace, marker, kill_now)
                    pump_scope.deadline = anyio.current_time() + DRAIN_AFTER_STOP_S
                    raise
                finally:
                    reader.command_exited()
        finally:
            with anyio.CancelScope(shield=True):
                await process.aclose()
    finally:
        os.close(read_fd)
    if returncode < 0:
        return ProcessExit(status=128 - returncode, signal=_signal_name(-returncode))
    return ProcessExit(status=returncode)


def descendants(roots: set[int], marker: bytes | None = None) -> set[int]:
    """Every live process below `roots` (by parent pid), whatever its session or group, and
    (with `marker`, a `NAME=value` entry) every process whose environment holds it, with the
    processes below those.

    Runs in a worker thread: it reads /proc. A process that escaped into a session of its own
    (setsid, a daemon) is found while its parent lives, and by its environment after that.
    """
    children: dict[int, list[int]] = {}
    marked: set[int] = set()
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        state, ppid_text = stat.rsplit(")", 1)[1].split()[:2]
        if state == "Z":
            continue  # exited, waiting to be collected: nothing left to stop
        ppid = int(ppid_text)
        children.setdefault(ppid, []).append(pid)
        if marker is not None and pid != me:
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes()
            except OSError:
                continue  # another user's, or not dumpable: found through its parent only
            if marker in environ.split(b"\0"):
                marked.add(pid)
    found: set[int] = set(marked)
    todo = [*roots, *marked]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


async def _stop(
    process: anyio.abc.Process,
    cancel_signal: int,
    grace: float,
    marker: bytes | None,
    kill_now: anyio.Event | None = None,
) -> None:
    """The cancel signal to the whole group; SIGKILL to the group once the grace is over, and
    to every other process of the job (see the module's docstring)."""
    tree = await anyio.to_thread.run_sync(descendants, {process.pid})
    if process.returncode is None and not (kill_now is not None and kill_now.is_set()):
        _kill_group(process.pid, cancel_signal)
        with anyio.move_on_after(grace):
            async with anyio.create_task_group() as tg:
                if kill_now is not None:

                    async def cut_short() -> None:
                        await kill_now.wait()
                        tg.cancel_scope.cancel()

                    tg.start_soon(cut_short)
                await process.wait()
                tg.cancel_scope.cancel()
    # Taken again while the command (the job executor, a subreaper) still holds its tree: a
    # process started during the grace is in it.
    tree |= await anyio.to_thread.run_sync(descendants, {process.pid})
    # Whatever of the group is still there (the command's children too) does not get to stay.
    _kill_group(process.pid, signal.SIGKILL)
    tree |= await anyio.to_thread.run_sync(descendants, tree | {process.pid}, marker)
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    await process.wait()
