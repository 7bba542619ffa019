"""A relay for a job that writes a lot to its terminal: `cat` copies the PTY into a wide pipe.

A PTY hands its reader at most 4 KiB at a time, and once its reader stops reading, the
writing command soon stops too: the kernel buffers only a few dozen KiB. The agent reads a
batch, then redacts, stamps and uploads it; while it does, the command waits, and the two
take turns instead of working side by side. The PTY's throughput then depends on how long
each turn of the agent's takes.

So once a job's output passes `RELAY_AFTER` bytes, the agent starts `cat` with the PTY's
master as its input and a 1 MiB pipe as its output, and reads the pipe from then on. `cat`
keeps the terminal drained while the agent works through what is in the pipe, and the agent
reads the pipe in large pieces. A job that writes little never pays for the extra process.

Nothing is lost or reordered at the switch: the agent stops reading the master before `cat`
starts, and `cat` writes out every piece before it reads the next. It ends by itself when the
terminal's last writer has closed it (a read error on the master, which `cat` reports to
/dev/null). It is the agent's child, not the job's: a cancel, which kills the job's process
tree, leaves it be, and it stops only once the agent has read everything it passed on.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal

import anyio
import anyio.to_thread

log = logging.getLogger("conveyor.runner")

RELAY_AFTER = 256 * 1024
"""Bytes of a job's terminal output read directly before the relay takes over."""
PIPE_SIZE = 1024 * 1024
"""The pipe's buffer: Linux's default ceiling for an unprivileged process."""
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_CAT = shutil.which("cat")

__all__ = ["PIPE_SIZE", "RELAY_AFTER", "Relay", "widen_pipe"]


def widen_pipe(fd: int) -> None:
    """Give a pipe a `PIPE_SIZE` buffer, if the system lets us (it is only faster)."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_SIZE)


class Relay:
    """A running `cat` from a PTY master into a pipe; `fd` is the pipe's (non-blocking) read
    end. `start` returns None when it cannot start: the caller reads the master on."""

    def __init__(self, pid: int, fd: int):
        self.pid = pid
        self.fd = fd

    @classmethod
    def start(cls, master: int) -> Relay | None:
        if _CAT is None:
            return None
        read_end, write_end = os.pipe()
        widen_pipe(write_end)
        # The master is shared with `cat`, whose reads must block: the flag belongs to the
        # open file, not to our descriptor. The agent no longer reads the master itself.
        os.set_blocking(master, True)
        try:
            pid = os.posix_spawn(
                _CAT,
                [_CAT],
                # Not the job's environment: the job's id in it would make a cancel kill it.
                {"LC_ALL": "C"},
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, master, 0),
                    (os.POSIX_SPAWN_DUP2, write_end, 1),
                    (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
                ],
            )
        except OSError as exc:
            log.warning("cannot relay the job's terminal through %s: %s", _CAT, exc)
            os.set_blocking(master, False)
            os.close(read_end)
            return None
        finally:
            os.close(write_end)
        os.set_blocking(read_end, False)
        return cls(pid, read_end)

    async def aclose(self) -> None:
        """Stop `cat` (it may still be waiting on a terminal held open by a leftover process)
        and collect it; close the pipe."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            await anyio.to_thread.run_sync(os.waitpid, self.pid, 0)
        os.close(self.fd)
