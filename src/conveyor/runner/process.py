"""Spawn a command in a PTY (or on a pipe) in a session of its own, and collect its output.

The child is a session leader, so its process group holds everything it starts that does not
move itself elsewhere; cancelling sends the cancel signal to that group, waits out the grace
period, then SIGKILLs the group.

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

READ_SIZE = 64 * 1024
DRAIN_IDLE_S = 0.2
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


async def _pump(
    fd: int, exited: anyio.Event, on_output: Callable[[bytes], Awaitable[None]]
) -> None:
    while True:
        if exited.is_set():
            with anyio.move_on_after(DRAIN_IDLE_S) as idle:
                await anyio.wait_readable(fd)
            if idle.cancelled_caught:
                return
        else:
            await anyio.wait_readable(fd)
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            continue
        except OSError as exc:
            if exc.errno == errno.EIO:  # the PTY's last writer closed it: normal end
                return
            raise
        if not data:
            return
        await on_output(data)


async def run_process(
    argv: list[str],
    *,
    env: dict[str, str],
    cwd: Path,
    on_output: Callable[[bytes], Awaitable[None]],
    use_pty: bool = True,
    cancel_signal: int = signal.SIGTERM,
    cancel_grace: float = 10.0,
) -> ProcessExit:
    """Run `argv` to its end. If cancelled, stop its process group first, then re-raise."""
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
        exited = anyio.Event()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_pump, read_fd, exited, on_output)
                returncode = await process.wait()
                exited.set()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await _stop(process, cancel_signal, cancel_grace)
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await process.aclose()
    finally:
        os.close(read_fd)
    if returncode < 0:
        return ProcessExit(status=128 - returncode, signal=_signal_name(-returncode))
    return ProcessExit(status=returncode)


async def _stop(process: anyio.abc.Process, cancel_signal: int, grace: float) -> None:
    """The cancel signal to the whole group; SIGKILL to the group once the grace is over."""
    if process.returncode is None:
        _kill_group(process.pid, cancel_signal)
        with anyio.move_on_after(grace):
            await process.wait()
    # Whatever of the group is still there (the command's children too) does not get to stay.
    _kill_group(process.pid, signal.SIGKILL)
    await process.wait()
