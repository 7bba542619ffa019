"""The host-wide half of machine-scope locks: a private directory of `flock(2)` lock files that
every agent process of one user on this machine shares.

Each key has two files, named by a hash of the key (keys are arbitrary strings):

    <hash>.lock    held with an exclusive flock by the agent process whose job holds the key
    <hash>.value   the key's value: a lock token, "doing" or "done" (absent: "")

Why flock: its locks belong to an open file description, so two descriptors of one file exclude
each other even inside one process (two lock services in one process behave like two agent
processes), and the kernel drops a lock when its descriptor is closed, also when the agent
process dies, so a crashed agent never leaves a key locked. POSIX record locks (`fcntl`,
`lockf`) belong to the process instead and vanish when any descriptor of the file is closed.

Only the holder of a key's flock writes its value file, by writing a new file and renaming it
over the old one, so a reader never sees half a value. A value left by a process that died
while holding the key is stale: the flock says whether a value is live.

Waiting for a flock held by another process cannot be done without blocking or polling, and a
blocked `flock()` cannot be interrupted. So the wait runs in a thread of its own; waiters
inside a process queue in `LockTable` first, so only one thread per contended key waits for a
caller. A wait given up (timeout, client gone, agent stopping) leaves its thread to close the
descriptor, and so let the lock go again, the moment the kernel grants it. The thread is a
daemon, so that an agent stopping while one of its waits is still blocked exits at once.

"done" means the work of a `lock do` key was done during the life of the agents on this host:
every process using the directory holds a shared flock on `.alive`, and the first one to start
when no other is running (it gets an exclusive flock on `.alive`) empties the directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import secrets
import stat
import tempfile
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

import anyio
import anyio.to_thread
from anyio.from_thread import BlockingPortal

from conveyor.errors import ConveyorError

ALIVE_FILE = ".alive"
# Value files are a few bytes; anything longer was not written by us.
_MAX_VALUE = 4096
# The files this module makes: lock and value files, and value files being written.
_OURS = re.compile(r"[0-9a-f]{40}\.(lock|value)(\.[0-9]+\.[0-9a-f]+)?")
_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW


def default_host_dir() -> Path:
    """`$TMPDIR/conveyor-locks-<uid>`: one per user, so no other user can touch it. Blocks (the
    first call of `tempfile.gettempdir` probes the disk): call it in a thread."""
    return Path(tempfile.gettempdir()) / f"conveyor-locks-{os.getuid()}"


def ensure_private_dir(path: Path) -> None:
    """Create `path` (mode 0700), or check that an existing one is a directory of this user that
    no other user can enter: another user's directory (a planted one, say) could fake states.
    Blocks: call it in a thread."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise ConveyorError(f"the lock directory {path} is not a directory")
    if info.st_uid != os.getuid():
        raise ConveyorError(
            f"the lock directory {path} belongs to another user (uid {info.st_uid})"
        )
    if info.st_mode & 0o077:
        raise ConveyorError(
            f"the lock directory {path} is open to other users (mode "
            f"{stat.S_IMODE(info.st_mode):04o}): make it 0700, or choose another with --locks-dir"
        )


class HostLocks:
    """The lock directory, joined for the life of one lock service. Use `HostLocks.open`."""

    def __init__(self, path: Path, portal: BlockingPortal):
        self.path = path
        self._portal = portal

    @classmethod
    @asynccontextmanager
    async def open(cls, path: Path) -> AsyncIterator[HostLocks]:
        """Join the directory (creating or emptying it as described above) until exit."""
        alive = await anyio.to_thread.run_sync(_join, path)
        try:
            # Wait threads hand their result back to the event loop through this portal.
            async with BlockingPortal() as portal:
                yield cls(path, portal)
        finally:
            os.close(alive)

    def _file(self, key: str, suffix: str) -> Path:
        digest = hashlib.sha256(key.encode()).hexdigest()[:40]
        return self.path / f"{digest}.{suffix}"

    async def lock(self, key: str) -> int:
        """Wait as long as it takes for the key's exclusive flock; returns its descriptor, which
        holds the lock until `unlock`. Cancelling the wait gives the lock up."""
        fd, locked = await anyio.to_thread.run_sync(_open_and_try, self._file(key, "lock"))
        if locked:
            return fd
        wait = _Wait(fd, self._portal)
        threading.Thread(target=wait.run, name=f"conveyor lock wait {fd}", daemon=True).start()
        try:
            await wait.granted.wait()
        except BaseException:
            wait.abandon()
            raise
        if wait.error is not None:
            os.close(fd)
            raise ConveyorError(f"cannot lock {self._file(key, 'lock')}: {wait.error.strerror}")
        return fd

    async def unlock(self, key: str, fd: int, value: str | None) -> None:
        """Write the key's new value first (None: keep it), then let the flock go."""
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._write_and_close, key, fd, value)

    def _write_and_close(self, key: str, fd: int, value: str | None) -> None:
        try:
            if value is not None:
                self._write(key, value)
        finally:
            os.close(fd)

    async def write(self, key: str, value: str) -> None:
        """Set the key's value; only while holding its flock."""
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._write, key, value)

    def _write(self, key: str, value: str) -> None:
        target = self._file(key, "value")
        if not value:
            target.unlink(missing_ok=True)
            return
        temporary = target.with_name(f"{target.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
        temporary.replace(target)

    async def read(self, key: str) -> str:
        """The key's value as last written, live or stale."""
        return await anyio.to_thread.run_sync(self._read, key)

    def _read(self, key: str) -> str:
        try:
            fd = os.open(self._file(key, "value"), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return ""
        try:
            return os.read(fd, _MAX_VALUE).decode("utf-8", "replace")
        finally:
            os.close(fd)

    async def probe(self, key: str) -> tuple[bool, str]:
        """(whether some process holds the key's flock now, its value as last written)."""
        return await anyio.to_thread.run_sync(self._probe, key)

    def _probe(self, key: str) -> tuple[bool, str]:
        try:
            fd = os.open(self._file(key, "lock"), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return False, ""
        try:
            try:
                # A shared lock is granted only while nobody holds the exclusive one.
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True, self._read(key)
            return False, self._read(key)
        finally:
            os.close(fd)


def _join(path: Path) -> int:
    """Take the shared `.alive` flock; empty the directory first if no other process holds it."""
    ensure_private_dir(path)
    alive = os.open(path / ALIVE_FILE, _OPEN_FLAGS, 0o600)
    try:
        try:
            fcntl.flock(alive, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # other agent processes run: their locks and "done" states stand
        else:
            # Nobody else uses the directory, so nobody holds a key: start from a clean slate.
            for entry in path.iterdir():
                if _OURS.fullmatch(entry.name):
                    entry.unlink(missing_ok=True)
        # Only waits while another process that is starting empties the directory.
        fcntl.flock(alive, fcntl.LOCK_SH)
    except BaseException:
        os.close(alive)
        raise
    return alive


def _open_and_try(path: Path) -> tuple[int, bool]:
    fd = os.open(path, _OPEN_FLAGS, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return fd, False
    except BaseException:
        os.close(fd)
        raise
    return fd, True


class _Wait:
    """One blocking flock in a thread. Whoever owns the descriptor at the end closes it: the
    thread if the waiter gave up first, the waiter if the lock was granted first."""

    def __init__(self, fd: int, portal: BlockingPortal):
        self._fd = fd
        self._portal = portal
        self._mutex = threading.Lock()
        self._state: Literal["waiting", "granted", "abandoned"] = "waiting"
        self.granted = anyio.Event()
        self.error: OSError | None = None

    def run(self) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except OSError as exc:
            self.error = exc
        with self._mutex:
            abandoned = self._state == "abandoned"
            if not abandoned:
                self._state = "granted"
        if abandoned:
            os.close(self._fd)
            return
        # The lock service stopped: it closes the descriptor itself as its waiter is cancelled.
        with contextlib.suppress(RuntimeError):
            self._portal.call(self.granted.set)

    def abandon(self) -> None:
        with self._mutex:
            granted = self._state == "granted"
            self._state = "abandoned"
        if granted:
            os.close(self._fd)
