"""Artifact paths and the globs over them, as the job side and the server both understand them.

An artifact's path is relative to the directory its upload ran in, with `/` between segments:
never absolute, never `..`, no empty or `.` segments. Globs are matched against such paths:
`*` and `?` stay within one segment, `[abc]` / `[!abc]` match one character of a set, and a
segment that is exactly `**` matches any number of directories (none included). Dotfiles are
matched like any other file. Upload globs and search queries follow the same rules, so what
`artifact upload 'dist/**/*.js'` stored, `artifact download 'dist/**/*.js' .` finds.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

PATH_MAX_LENGTH = 1000
"""Characters in an artifact path (the database column's size)."""

_MAGIC = re.compile(r"[*?\[]")


def path_problem(path: str) -> str | None:
    """Why `path` cannot name an artifact (a phrase to follow the path), or None if it can."""
    if not path:
        return "is empty"
    if len(path) > PATH_MAX_LENGTH:
        return f"is longer than {PATH_MAX_LENGTH} characters"
    if any(ord(c) < 0x20 or c == "\x7f" for c in path):
        return "contains control characters"
    if path.startswith("/"):
        return "is absolute: artifact paths are relative to the directory the upload ran in"
    segments = path.split("/")
    if ".." in segments:
        return "goes up (`..`) out of the directory the upload ran in"
    if any(s in ("", ".") for s in segments):
        return "is not normalized: it has an empty or `.` segment"
    return None


def split_globs(args: Iterable[str]) -> list[str]:
    """Globs given as arguments, each of which may be a `;`-separated list (as Buildkite
    accepts), without blanks and repeats, in the order given."""
    found: list[str] = []
    for arg in args:
        for part in arg.split(";"):
            glob = part.strip()
            if glob and glob not in found:
                found.append(glob)
    return found


def glob_segments(pattern: str) -> list[str]:
    """The pattern's segments, with `.` and empty ones dropped (`./dist//x` is `dist/x`).

    Raises ValueError, naming the pattern, for one that would reach outside its root.
    """
    if pattern.startswith("/"):
        raise ValueError(
            f"{pattern!r} is absolute: artifact paths are relative to the directory the upload "
            "runs in"
        )
    segments = [s for s in pattern.split("/") if s not in ("", ".")]
    if ".." in segments:
        raise ValueError(
            f"{pattern!r} goes up (`..`): artifact paths stay inside the directory the upload "
            "runs in"
        )
    if not segments:
        raise ValueError(f"{pattern!r} names no file")
    return segments


def is_magic(segment: str) -> bool:
    return _MAGIC.search(segment) is not None


def compile_glob(pattern: str) -> re.Pattern[str]:
    """A regex that fully matches the artifact paths `pattern` names (ValueError if it is bad)."""
    segments = glob_segments(pattern)
    parts: list[str] = []
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == "**":
            # Any number of whole directories; at the end, anything below.
            parts.append(".+" if last else "(?:[^/]+/)*")
        else:
            parts.append(_segment(segment) + ("" if last else "/"))
    return re.compile("".join(parts), re.DOTALL)


def _segment(segment: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(segment):
        c = segment[i]
        if c == "*":
            while i + 1 < len(segment) and segment[i + 1] == "*":
                i += 1  # `a**b` is `a*b`: only a segment of its own crosses directories
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and (end := _class_end(segment, i)) is not None:
            body = segment[i + 1 : end]
            negate = body[:1] in ("!", "^")
            if negate:
                body = body[1:]
            # Escaped so that no character of the set is read as regex syntax (`[`, `&&`,
            # `--` and `~~` also make Python warn of future set operations); `-` keeps ranges.
            escaped = "".join("\\" + ch if ch in "\\^[]&|~" else ch for ch in body)
            escaped = escaped.replace("--", "-\\-")
            out.append(f"[{'^' if negate else ''}{escaped}" + ("/]" if negate else "]"))
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def _class_end(segment: str, start: int) -> int | None:
    """Index of the `]` closing the class opened at `start`, or None (then `[` is literal)."""
    i = start + 1
    if i < len(segment) and segment[i] in ("!", "^"):
        i += 1
    if i < len(segment) and segment[i] == "]":
        i += 1  # a `]` first in the class is one of its characters
    end = segment.find("]", i)
    return None if end == -1 else end
