"""Background checkpoints of an SQLite database's write-ahead log.

In WAL mode every commit appends pages to the `-wal` file, and a checkpoint copies them back
into the database file and syncs it. By default the connection whose commit takes the log
past 1,000 pages runs that checkpoint itself, inside the commit: a server storing job logs
(a megabyte a chunk) would then copy and fsync megabytes inside every few uploads, and every
other transaction would queue behind it on the single connection.

So the server's connection checkpoints only past `WRITER_CHECKPOINT_PAGES` (a ceiling that
bounds the log if this loop falls behind), and `checkpoint_loop` checkpoints from a
connection and a worker thread of its own every `INTERVAL_S`. It is PASSIVE: it copies what
is committed without waiting for, or blocking, any reader or writer.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import anyio
import anyio.to_thread

log = logging.getLogger("conveyor.storage")

INTERVAL_S = 0.5
WRITER_CHECKPOINT_PAGES = 8192
"""Pages in the log past which a committing connection checkpoints after all (32 MiB with
SQLite's 4 KiB pages)."""

__all__ = ["INTERVAL_S", "WRITER_CHECKPOINT_PAGES", "checkpoint_loop", "checkpoint_once"]


def _connect(path: Path) -> sqlite3.Connection:
    # Used from one worker thread at a time, never concurrently; autocommit, no transaction.
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=0")
    return conn


def checkpoint_once(conn: sqlite3.Connection) -> tuple[int, int]:
    """(pages in the log, pages of it now in the database file)."""
    busy, in_log, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    del busy  # another checkpoint was running: the next round catches up
    return int(in_log), int(copied)


async def checkpoint_loop(path: Path, *, interval: float = INTERVAL_S) -> None:
    """Checkpoint `path`'s log every `interval` seconds until cancelled."""
    try:
        conn = await anyio.to_thread.run_sync(_connect, path)
    except sqlite3.Error as exc:
        # Not fatal either: the server runs on, its connection checkpointing past the ceiling.
        log.warning("no background checkpoints of %s: %s", path, exc)
        return
    failing = False
    try:
        while True:
            await anyio.sleep(interval)
            try:
                await anyio.to_thread.run_sync(checkpoint_once, conn)
            except sqlite3.Error as exc:
                # Not fatal: committing connections checkpoint past the ceiling themselves.
                if not failing:
                    log.warning("background checkpoint of %s failed: %s", path, exc)
                failing = True
            else:
                failing = False
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(conn.close)
