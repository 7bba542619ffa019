"""Per-line timestamps kept inside a job's log, as in-band APC escape sequences.

The agent puts a marker at the start of every line of output, holding the wall-clock time in
milliseconds since the epoch when the line's first byte was read:

    ESC _ c t ; t = <ms> BEL          e.g. b"\\x1b_ct;t=1733470000123\\x07"

An APC ("application program command") sequence is skipped by terminals, so even a log shown
raw reads as plain text. The markers are part of the stored bytes (chunk offsets and the log's
size count them). Output that itself contains the marker's opening `ESC _ c t ;` is stored with
that opening escaped as `ESC _ c t ; e BEL`, so stripping gives back exactly the bytes written,
whatever they are.

`Stamper` inserts markers; `Reader` strips or renders them. Both work on a stream cut
anywhere: a marker split across chunks (or reads) is held back until it is complete.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal

PREFIX = b"\x1b_ct;"
"""The opening of every marker; in output it is stored escaped (`ESCAPED`)."""
ESCAPED = PREFIX + b"e\x07"
_BEL = b"\x07"
# ms since the epoch: 13 digits until the year 2286; 15 reach past the year 9999.
_MAX_DIGITS = 15
_MARK = re.compile(rb"\x1b_ct;(?:t=(\d{1,%d})|e)\x07" % _MAX_DIGITS)
# What could still become a marker (or an escape) once more bytes arrive.
_PARTIAL = re.compile(rb"\x1b(?:_(?:c(?:t(?:;(?:e|t(?:=\d{0,%d})?)?)?)?)?)?\Z" % _MAX_DIGITS)
_PARTIAL_MAX = len(b"\x1b_ct;t=") + _MAX_DIGITS
_TRAILING_MARK = re.compile(rb"\x1b_ct;t=\d{1,%d}\x07\Z" % _MAX_DIGITS)

Mode = Literal["strip", "render", "raw"]
MODES: tuple[Mode, ...] = ("strip", "render", "raw")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def marker(ms: int) -> bytes:
    return PREFIX + b"t=%d\x07" % ms


def render_time(ms: int) -> bytes:
    """`[2026-12-06T07:00:00.123Z] `: the prefix a rendered line gets."""
    try:
        when = datetime.fromtimestamp(ms // 1000, UTC)
    except (OverflowError, ValueError, OSError):
        return b"[t=%d] " % ms
    return b"[%s.%03dZ] " % (when.strftime("%Y-%m-%dT%H:%M:%S").encode(), ms % 1000)


def _held_prefix(data: bytes | bytearray) -> int:
    """How many bytes at the end of `data` are a proper prefix of `PREFIX`."""
    for n in range(min(len(PREFIX) - 1, len(data)), 0, -1):
        if data.endswith(PREFIX[:n]):
            return n
    return 0


class Stamper:
    """Escapes output's own marker openings and puts a marker before each line's first byte.

    `feed` returns what can be stored now; up to 4 bytes that may be the start of a marker
    opening are held until the next `feed` (or `flush`) settles them.
    """

    def __init__(self, clock: Callable[[], int] = now_ms) -> None:
        self._clock = clock
        self._held = b""
        self.at_line_start = True
        """True when the next byte fed starts a line (the last one returned was a newline)."""

    def feed(self, data: bytes) -> bytes:
        buf = self._held + data
        keep = _held_prefix(buf)
        self._held = buf[len(buf) - keep :] if keep else b""
        return self._stamp(buf[: len(buf) - keep])

    def flush(self) -> bytes:
        """The held bytes, now that no more output follows."""
        held, self._held = self._held, b""
        return self._stamp(held)

    def _stamp(self, body: bytes) -> bytes:
        if not body:
            return b""
        if PREFIX in body:
            body = body.replace(PREFIX, ESCAPED)
        mark = marker(self._clock())
        # One `replace` pass in C puts a marker after every newline; the one after a final
        # newline is dropped: the next line gets its own, with the time it is read.
        ends_line = body.endswith(b"\n")
        out = body.replace(b"\n", b"\n" + mark)
        if ends_line:
            out = out[: len(out) - len(mark)]
        if self.at_line_start:
            out = mark + out
        self.at_line_start = ends_line
        return out


def safe_cut(data: bytes, n: int) -> int:
    """The largest cut at or before `n` that neither splits a marker or an escape nor keeps
    a line's marker without the line."""
    if n >= len(data):
        return len(data)
    cut = n
    if found := _PARTIAL.search(data, max(0, cut - _PARTIAL_MAX), cut):
        cut = found.start()
    if found := _TRAILING_MARK.search(data, max(0, cut - _PARTIAL_MAX - 1), cut):
        cut = found.start()
    return cut


class Reader:
    """Turns stored log bytes into what a reader asked for, chunk by chunk.

    `strip`: the output exactly as written; `render`: each line prefixed with its UTC time;
    `raw`: the stored bytes unchanged.
    """

    def __init__(self, mode: Mode) -> None:
        self.mode = mode
        self._held = b""

    def feed(self, data: bytes) -> bytes:
        if self.mode == "raw":
            return data
        buf = self._held + data
        start = max(0, len(buf) - _PARTIAL_MAX)
        partial = _PARTIAL.search(buf, start)
        cut = partial.start() if partial else len(buf)
        self._held = buf[cut:]
        return self._convert(buf[:cut])

    def flush(self) -> bytes:
        """What was held at the end: an unfinished marker is not one, so it is output as is."""
        held, self._held = self._held, b""
        return held

    def _convert(self, data: bytes) -> bytes:
        if PREFIX not in data:
            return data
        if self.mode == "strip":
            return _MARK.sub(_strip_one, data)
        return _MARK.sub(_render_one, data)


def _strip_one(found: re.Match[bytes]) -> bytes:
    return b"" if found.group(1) is not None else PREFIX


def _render_one(found: re.Match[bytes]) -> bytes:
    ms = found.group(1)
    return render_time(int(ms)) if ms is not None else PREFIX


def strip(data: bytes) -> bytes:
    reader = Reader("strip")
    return reader.feed(data) + reader.flush()


def render(data: bytes) -> bytes:
    reader = Reader("render")
    return reader.feed(data) + reader.flush()
