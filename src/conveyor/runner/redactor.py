"""Streaming redaction: secrets in a job's output become `[REDACTED]` before any byte of them
leaves the agent.

Needles are secret values (at least `MIN_SECRET` bytes) and their escaped forms: JSON string
escaping, URL encoding (`%20` and `+` for spaces) and base64 at each of the three byte
alignments a secret can have inside a larger encoded blob. A secret of several lines is matched
line by line, each line trimmed, with any run of whitespace between lines — so a PTY's `\\r\\n`,
indentation or `set -x` reformatting does not let it through.

Output is withheld only from the earliest place where a secret might be starting, until more
output settles it (or `flush` at the end of the job), so a secret split across writes or
chunks is never partly emitted, and output with no secret in sight flows at once.
"""

from __future__ import annotations

import base64
import fnmatch
import functools
import json
import re
from collections.abc import Callable, Iterable, Mapping
from urllib.parse import quote, quote_plus

MIN_SECRET = 6
"""Shorter values are not redacted (they would redact ordinary words): a warning says so."""

REDACTED = b"[REDACTED]"

DEFAULT_REDACTED_VARS = (
    "*_PASSWORD",
    "*_SECRET",
    "*_TOKEN",
    "*_PRIVATE_KEY",
    "*_SSH_KEY",
    "*_ACCESS_KEY",
    "*_SECRET_KEY",
    "*_API_KEY",
    "*_CONNECTION_STRING",
)
"""Names of the variables whose values are secrets (`--redacted-vars`), as shell globs."""

_MAX_GAP = 64
"""Whitespace allowed between the lines of a multi-line secret; bounds what is withheld."""

_WS = frozenset(b" \t\r\n\f\v")
_PREFIX = 4
"""Tokens of a needle's start that the C regex engine checks before Python looks closer."""
_Token = int | None  # a byte, or None for a whitespace run between lines


def secret_values(env: Mapping[str, str], patterns: Iterable[str]) -> dict[str, str]:
    """The variables of `env` whose names match one of `patterns` (case-sensitive globs)."""
    matches = _names(tuple(patterns))
    return {k: v for k, v in env.items() if matches(k)}


@functools.lru_cache(maxsize=16)
def _names(patterns: tuple[str, ...]) -> Callable[[str], object]:
    # One regex for all the globs: every job checks every variable of its environment.
    if not patterns:
        return lambda _name: False
    return re.compile("|".join(fnmatch.translate(p) for p in patterns)).match


def _forms(secret: bytes) -> set[bytes]:
    """The secret and the escaped forms it may appear in."""
    forms = {secret}
    text = secret.decode("utf-8", errors="surrogateescape")
    try:
        forms.add(json.dumps(text)[1:-1].encode())
        forms.add(json.dumps(text, ensure_ascii=False)[1:-1].encode("utf-8"))
    except UnicodeEncodeError:
        pass  # not text: it has no JSON form
    forms.add(quote(secret, safe="").encode())
    forms.add(quote_plus(secret, safe="").encode())
    for shift in range(3):
        # Inside a longer base64 blob the secret starts at byte `shift` of a 3-byte group:
        # only the characters that depend on the secret's bytes alone are kept.
        encoded = base64.b64encode(b"\0" * shift + secret)
        first = -(-shift * 8 // 6)  # ceil: characters touched by the bytes before it
        last = (shift + len(secret)) * 8 // 6  # characters decided by its bytes alone
        part = encoded[first:last]
        if len(part) >= MIN_SECRET:
            forms.add(part)
    return {f for f in forms if len(f) >= MIN_SECRET}


def _tokens(needle: bytes) -> tuple[_Token, ...]:
    """A multi-line needle: its trimmed, non-blank lines with a whitespace run between them."""
    lines = [line.strip() for line in needle.splitlines()]
    lines = [line for line in lines if line]
    out: list[_Token] = []
    for i, line in enumerate(lines):
        if i:
            out.append(None)
        out.extend(line)
    return tuple(out)


def _pattern(tokens: tuple[_Token, ...]) -> bytes:
    out: list[bytes] = []
    for tok in tokens:
        out.append(rb"[ \t\r\n\f\v]{1,%d}" % _MAX_GAP if tok is None else re.escape(bytes([tok])))
    return b"".join(out)


def _could_start(tokens: tuple[_Token, ...], tail: bytes) -> bool:
    """Is `tail` (the end of the output so far) the beginning of a match of `tokens`?"""
    i = 0
    n = len(tail)
    for tok in tokens:
        if i == n:
            return True
        if tok is None:
            run = i
            while i < n and tail[i] in _WS and i - run < _MAX_GAP:
                i += 1
            if i == run:
                return False
        elif tail[i] != tok:
            return False
        else:
            i += 1
    return i == n


class Redactor:
    """Feed it output with `write`; it returns what can be released, redacted. `flush` at the
    end returns the rest. Secrets can be added at any time (needles only grow)."""

    def __init__(self, secrets: Iterable[str | bytes] = ()) -> None:
        self._needles: set[tuple[_Token, ...]] = set()
        self._by_first: dict[int, list[tuple[_Token, ...]]] = {}
        self._compiled = False  # whether any needle was compiled: otherwise output passes
        # One-line needles are found with `bytes.find`, one pass each: for a few dozen needles
        # that is many times faster than a regex alternation, whose cost grows with every
        # branch at every byte. Needles of several lines (whitespace runs between them) use
        # a regex.
        self._literals: list[bytes] = []
        self._regex: re.Pattern[bytes] | None = None
        self._starts: re.Pattern[bytes] | None = None  # where a needle's first tokens match
        self._tail = 0  # how near the end a partial match may be too short for `_starts`
        self._window = 0  # the longest a match can be: how far back a partial one may start
        self._pending = b""
        # Where in `_pending` a secret may still be starting; the rest of it is known not to,
        # so each write looks only at these and at what the new bytes let it see.
        self._alive: list[int] = []
        self._rescan = False  # new needles: all of `_pending` is looked at again
        self._stale = False  # new needles: the regexes are made again before the next write
        self.warnings: list[str] = []
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | bytes, *, name: str = "a value") -> bool:
        """Redact `secret` from now on; False (and a warning) when it is too short to."""
        raw = secret.encode() if isinstance(secret, str) else secret
        if len(raw.strip()) < MIN_SECRET:
            if raw.strip():
                self.warnings.append(
                    f"{name} is shorter than {MIN_SECRET} bytes: it is not redacted from the log"
                )
            return False
        # Surrounding whitespace (a YAML block's trailing newline) is not part of a secret:
        # what is printed is the value without it. Lines of a multi-line one match trimmed.
        for form in _forms(raw.strip()):
            tokens = _tokens(form) if b"\n" in form.strip() else tuple(form)
            if tokens and tokens not in self._needles:
                self._needles.add(tokens)
                self._by_first.setdefault(tokens[0], []).append(tokens)  # type: ignore[arg-type]
                gaps = sum(1 for t in tokens if t is None)
                self._window = max(self._window, len(tokens) + gaps * (_MAX_GAP - 1))
                self._stale = True
        return True

    def _compile(self) -> None:
        """The regexes for the needles, made at the first output after they changed: not
        before the job's command is spawned, where they would only delay it."""
        self._stale = False
        # Longest first, so that of two needles matching at one place the longer one wins.
        ordered = sorted(self._needles, key=len, reverse=True)
        self._literals = [bytes(t) for t in ordered if None not in t]  # type: ignore[arg-type]
        multiline = [t for t in ordered if None in t]
        self._regex = re.compile(b"|".join(map(_pattern, multiline))) if multiline else None
        self._compiled = True
        starts = {_pattern(t[:_PREFIX]) for t in ordered}
        # No lookahead: an alternation lets the engine skip ahead on its first bytes.
        self._starts = re.compile(b"|".join(sorted(starts)))
        gaps = max(sum(1 for t in n[:_PREFIX] if t is None) for n in ordered)
        self._tail = _PREFIX - 1 + gaps * _MAX_GAP
        self._rescan = True

    def write(self, data: bytes) -> bytes:
        if self._stale:
            self._compile()
        if not self._compiled:
            return data
        seen = 0 if self._rescan else len(self._pending)
        self._rescan = False
        buf = self._pending + data
        ranges = self._matches(buf)
        alive = self._partials(buf, seen)
        safe = alive[0] if alive else len(buf)
        # A match reaching the end may grow (a longer needle, more whitespace): wait for it.
        for start, end in ranges:
            if end >= len(buf) or end > safe:
                safe = min(safe, start)
        out = self._replace(buf[:safe], [(s, e) for s, e in ranges if e <= safe])
        self._pending = buf[safe:]
        self._alive = [i - safe for i in alive]
        return out

    def flush(self) -> bytes:
        """The withheld rest: complete matches in it are redacted, partial ones are not secrets."""
        if self._stale:
            self._compile()
        buf, self._pending = self._pending, b""
        self._alive = []
        if not self._compiled or not buf:
            return buf
        return self._replace(buf, self._matches(buf))

    def _matches(self, buf: bytes) -> list[tuple[int, int]]:
        """Every match, overlapping ones merged: two secrets that overlap are both hidden."""
        spans: list[tuple[int, int]] = []
        find = buf.find
        for needle in self._literals:
            size = len(needle)
            i = find(needle)
            while i != -1:
                spans.append((i, i + size))
                i = find(needle, i + 1)
        if self._regex is not None:
            pos = 0
            while (m := self._regex.search(buf, pos)) is not None:
                spans.append(m.span())
                pos = m.start() + 1
        spans.sort()
        ranges: list[tuple[int, int]] = []
        for start, end in spans:
            if ranges and start < ranges[-1][1]:
                ranges[-1] = (ranges[-1][0], max(end, ranges[-1][1]))
            else:
                ranges.append((start, end))
        return ranges

    def _partials(self, buf: bytes, seen: int) -> list[int]:
        """The places where a secret may be starting, in order. `buf[:seen]` was looked at
        before: of it, only the places alive then, and the last `_tail` bytes (which the new
        bytes may complete), are looked at again."""
        assert self._starts is not None
        n = len(buf)
        lo = max(0, n - self._window + 1)
        # Where a needle's first tokens are all there, the regex engine finds them; nearer the
        # end than that, every byte that starts a needle is a candidate.
        near_end = max(lo, n - self._tail)
        candidates = {i for i in self._alive if i >= lo}
        pos = max(lo, seen - self._tail)
        while (m := self._starts.search(buf, pos)) is not None:
            candidates.add(m.start())
            pos = m.start() + 1  # overlapping starts too ("-----" holds "----" twice)
        candidates.update(i for i in range(near_end, n) if buf[i] in self._by_first)
        return [
            i
            for i in sorted(candidates)
            if any(_could_start(t, buf[i:]) for t in self._by_first.get(buf[i], ()))
        ]

    @staticmethod
    def _replace(buf: bytes, ranges: list[tuple[int, int]]) -> bytes:
        if not ranges:
            return buf
        parts: list[bytes] = []
        last = 0
        for start, end in ranges:
            parts.append(buf[last:start])
            parts.append(REDACTED)
            last = end
        parts.append(buf[last:])
        return b"".join(parts)
