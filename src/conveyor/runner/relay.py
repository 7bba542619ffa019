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
starts, and `cat` writes out every piece before it reads the next. `cat` ends by itself when
the terminal's last writer has closed it (a read error on the master, which it reports to
/dev/null); if it ends otherwise (killed), the agent reads the terminal itself again, so
what `cat` had not taken is not lost. It runs in a session of its own, without the agent's
or the job's descriptors and environment: a Ctrl-C meant for the agent, or a cancel, which
kills the job's process tree, does not reach it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import struct
import subprocess
import termios
from pathlib import Path

import anyio
import anyio.to_thread

log = logging.getLogger("conveyor.runner")

RELAY_AFTER = 256 * 1024
"""Bytes of a job's output read directly before the relay takes over (a PTY), or before its
pipe is widened (pipe mode): only a busy job gets either."""
PIPE_SIZE = 1024 * 1024
"""A wide pipe's buffer: Linux's default ceiling for an unprivileged process. Each one counts
against the user's allowance of pipe memory (`fs.pipe-user-pages-soft`, 64 MiB by default),
which is why only busy jobs get one."""
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

    def __init__(self, process: subprocess.Popen[bytes], master: int, fd: int):
        self._process = process
        self.master = master
        self.fd = fd

    @property
    def pid(self) -> int:
        return self._process.pid

    @classmethod
    def start(cls, master: int) -> Relay | None:
        if _CAT is None:
            return None
        try:
            read_end, write_end = os.pipe()
        except OSError as exc:
            log.warning("cannot relay the job's terminal: %s", exc)
            return None
        widen_pipe(write_end)
        # The master is shared with `cat`, whose reads must block: the flag belongs to the
        # open file, not to our descriptor. The agent does not read the master meanwhile.
        os.set_blocking(master, True)
        try:
            process = subprocess.Popen(
                [_CAT],
                stdin=master,
                stdout=write_end,
                stderr=subprocess.DEVNULL,
                # Not the job's environment: the job's id in it would make a cancel kill it.
                env={"LC_ALL": "C"},
                close_fds=True,
                start_new_session=True,
            )
        except OSError as exc:
            log.warning("cannot relay the job's terminal through %s: %s", _CAT, exc)
            os.set_blocking(master, False)
            os.close(read_end)
            return None
        finally:
            os.close(write_end)
        os.set_blocking(read_end, False)
        return cls(process, master, read_end)

    def _busy(self) -> bool:
        try:
            waiting = struct.unpack("i", fcntl.ioctl(self.master, termios.FIONREAD, b"\0" * 4))[0]
        except OSError:
            waiting = 0
        if waiting:
            return True
        try:
            state = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        # Running or about to (R, D), or stopped (T, t) — maybe holding what it read: only a
        # `cat` asleep on an empty terminal (S) has nothing more to pass on.
        return state in ("R", "D", "T", "t")

    async def busy(self) -> bool:
        """Whether `cat` may still pass output on: the terminal holds bytes it has not taken,
        or it is running or stopped rather than waiting on the terminal. Read in a worker
        thread."""
        return await anyio.to_thread.run_sync(self._busy)

    async def aclose(self) -> None:
        """Stop `cat` (it may still be waiting on a terminal held open by a leftover process)
        and collect it; close the pipe. The master is the caller's again, non-blocking."""
        if self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._process.pid, signal.SIGKILL)
            await anyio.to_thread.run_sync(self._process.wait)
        os.close(self.fd)
        os.set_blocking(self.master, False)
