"""The timestamp marker codec: insert, strip, render, on streams cut anywhere."""

from __future__ import annotations

import itertools
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor.logformat import (
    ESCAPED,
    PREFIX,
    Reader,
    Stamper,
    marker,
    render,
    render_time,
    safe_cut,
    strip,
)

T0 = 1_733_470_000_123  # 2024-12-06T07:26:40.123Z


WHOLE = re.compile(rb"\x1b_ct;(?:t=\d{1,15}|e)\x07")
BARE_AT_END = re.compile(rb"\x1b_ct;t=\d{1,15}\x07\Z")


def counting_clock(start: int = T0) -> itertools.count[int]:
    return itertools.count(start, 1000)


def lines(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


def stamp(*writes: bytes, start: int = T0) -> bytes:
    stamper = Stamper(counting_clock(start).__next__)
    return b"".join(stamper.feed(w) for w in writes) + stamper.flush()


# Output rich in what matters here: newlines, marker openings and pieces of them.
_pieces = st.sampled_from([b"\n", b"\r\n", b"\x1b", b"_", b"c", b"t", b";", b"e", b"=", b"7",
                           b"\x07", PREFIX, ESCAPED, marker(T0), b"abc", b"\x1b[31m"])  # fmt: skip
outputs = st.lists(st.one_of(_pieces, st.binary(max_size=20)), max_size=30).map(b"".join)


def cut_everywhere(data: bytes, step: int = 1) -> list[list[bytes]]:
    """`data` cut in two at every position (and as a whole)."""
    return [[data[:i], data[i:]] for i in range(0, len(data) + 1, step)]


# --- inserting -------------------------------------------------------------------------------


def test_every_line_starts_with_the_time_its_first_byte_was_written() -> None:
    t1, t2, t3 = T0, T0 + 1000, T0 + 2000
    stored = stamp(b"one\r\ntw", b"o\r\n", b"\r\nthree")
    assert stored == (
        marker(t1) + b"one\r\n" + marker(t1) + b"tw" + b"o\r\n"
        + marker(t3) + b"\r\n" + marker(t3) + b"three"
    )  # fmt: skip
    # The second write continued a line: its clock reading went unused.
    assert marker(t2) not in stored


def test_a_line_is_stamped_when_it_starts_not_when_the_previous_one_ends() -> None:
    stamper = Stamper(counting_clock().__next__)
    assert stamper.feed(b"done\n") == marker(T0) + b"done\n"
    assert stamper.at_line_start
    assert stamper.feed(b"next") == marker(T0 + 1000) + b"next"
    assert not stamper.at_line_start


def test_empty_lines_get_a_marker_too() -> None:
    assert stamp(b"\n\n") == marker(T0) + b"\n" + marker(T0) + b"\n"


def test_nothing_written_stores_nothing() -> None:
    assert stamp(b"", b"") == b""


def test_output_containing_the_marker_opening_is_escaped() -> None:
    forged = marker(42) + b"x\n"
    stored = stamp(forged)
    assert stored == marker(T0) + ESCAPED + b"t=42\x07x\n"
    assert strip(stored) == forged


def test_a_possible_marker_opening_is_held_until_settled() -> None:
    stamper = Stamper(counting_clock().__next__)
    assert stamper.feed(b"a\x1b_c") == marker(T0) + b"a"
    assert stamper.feed(b"t;") == ESCAPED  # it was one: escaped
    assert stamper.feed(b"\x1b") == b""
    assert stamper.feed(b"[0m") == b"\x1b[0m"  # it was not
    assert stamper.feed(b"\x1b_") == b""
    assert stamper.flush() == b"\x1b_"  # the end settles it


# --- stripping and rendering -----------------------------------------------------------------


@settings(max_examples=300)
@given(writes=st.lists(outputs, max_size=6))
def test_strip_gives_back_exactly_what_was_written(writes: list[bytes]) -> None:
    assert strip(stamp(*writes)) == b"".join(writes)


@settings(max_examples=150)
@given(data=outputs)
def test_a_stored_log_cut_at_every_position_strips_the_same(data: bytes) -> None:
    stored = stamp(*lines(data))  # a write per line: many markers
    for pieces in cut_everywhere(stored):
        reader = Reader("strip")
        out = b"".join(reader.feed(p) for p in pieces) + reader.flush()
        assert out == strip(stored) == data


@settings(max_examples=100)
@given(data=outputs, sizes=st.lists(st.integers(1, 7), min_size=1, max_size=5))
def test_reading_in_pieces_of_any_sizes_matches_reading_at_once(
    data: bytes, sizes: list[int]
) -> None:
    stored = stamp(data)
    for mode in ("strip", "render", "raw"):
        reader = Reader(mode)
        out, pos = b"", 0
        for size in itertools.cycle(sizes):
            if pos >= len(stored):
                break
            out += reader.feed(stored[pos : pos + size])
            pos += size
        out += reader.flush()
        whole = Reader(mode)
        assert out == whole.feed(stored) + whole.flush()


def test_render_prefixes_each_line_with_its_utc_time() -> None:
    stored = stamp(b"first\r\nsecond", b" half\r\n", b"third\r\n")
    assert render(stored) == (
        b"[2024-12-06T07:26:40.123Z] first\r\n"
        b"[2024-12-06T07:26:40.123Z] second half\r\n"
        b"[2024-12-06T07:26:42.123Z] third\r\n"
    )


def test_render_keeps_output_that_looked_like_a_marker_as_written() -> None:
    assert render(stamp(marker(5) + b"\n")) == b"[2024-12-06T07:26:40.123Z] " + marker(5) + b"\n"


def test_render_time_edges() -> None:
    assert render_time(0) == b"[1970-01-01T00:00:00.000Z] "
    assert render_time(999) == b"[1970-01-01T00:00:00.999Z] "
    assert render_time(10**15 - 1) == b"[t=999999999999999] "  # past the year 9999


def test_raw_is_the_stored_bytes() -> None:
    stored = stamp(b"a\nb\n")
    reader = Reader("raw")
    assert reader.feed(stored[:3]) + reader.feed(stored[3:]) + reader.flush() == stored


def test_an_unfinished_marker_at_the_end_is_output_as_is() -> None:
    reader = Reader("strip")
    assert reader.feed(b"x\x1b_ct;t=12") == b"x"
    assert reader.flush() == b"\x1b_ct;t=12"


def test_a_marker_with_too_many_digits_is_not_one() -> None:
    text = PREFIX + b"t=" + b"1" * 16 + b"\x07"
    assert strip(text) == text


# --- cutting ---------------------------------------------------------------------------------


@settings(max_examples=100)
@given(data=outputs)
def test_a_safe_cut_splits_no_marker_and_leaves_no_bare_marker(data: bytes) -> None:
    stored = stamp(*lines(data))
    for n in range(len(stored) + 2):
        cut = safe_cut(stored, n)
        assert n - len(marker(T0) + ESCAPED) <= cut <= min(n, len(stored))
        head = stored[:cut]
        # Every marker opening in the head belongs to a whole marker or escape...
        assert head.count(PREFIX) == len(WHOLE.findall(head))
        # ...and no marker is left without its line's first byte.
        assert not BARE_AT_END.search(head)
        assert strip(stored).startswith(strip(head))
