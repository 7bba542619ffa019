"""The rejected pipelines listed in docs/pipelines.md are rejected, with the documented message.

Each table between `<!-- rejected-inputs ... -->` and `<!-- /rejected-inputs -->` has rows
`| `PIPELINE` | `MESSAGE FRAGMENT` | ... |`: a whole pipeline as one line of YAML, and a part
of the message a user gets. Each pipeline goes through what creating a build does (parse with
interpolation, check keys and dependencies, plan the steps), with the variables the docs name,
and must be refused with a PipelineError whose message contains the fragment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from conveyor.errors import PipelineError
from conveyor.server.scheduler import prepare_build

DOC = Path(__file__).resolve().parents[2] / "docs" / "pipelines.md"
FILENAME = "pipeline.yml"
BUILD_ENV = {"EMPTY": ""}
"""The docs say the rows are checked as a build created with `--env EMPTY=`."""

_START = "<!-- rejected-inputs"
_END = "<!-- /rejected-inputs -->"
_ROW = re.compile(r"^\|\s*`(?P<pipeline>[^`]+)`\s*\|\s*`(?P<fragment>[^`]+)`\s*\|")
MIN_STRICTER_ROWS = 10


@dataclass(frozen=True)
class Row:
    table: int
    """0 for the first marked table (stricter than Buildkite), 1 for the next..."""
    line: int
    """1-based line in the doc, for failure messages."""
    pipeline: str
    fragment: str


def read_rows(text: str) -> list[Row]:
    """Every row of every marked table. A row that does not have the two code cells is an error,
    so a malformed row cannot silently drop out of the check."""
    rows: list[Row] = []
    table = -1
    inside = False
    table_lines: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith(_END):
            if not inside:
                raise AssertionError(f"{DOC.name}:{number}: {_END} without a start marker")
            rows.extend(_table_rows(table, table_lines))
            inside, table_lines = False, []
        elif stripped.startswith(_START):
            if inside:
                raise AssertionError(f"{DOC.name}:{number}: nested {_START}")
            inside, table = True, table + 1
        elif inside and stripped.startswith("|"):
            table_lines.append((number, stripped))
    if inside:
        raise AssertionError(f"{DOC.name}: {_START} is never closed")
    return rows


def _table_rows(table: int, lines: list[tuple[int, str]]) -> list[Row]:
    if len(lines) < 3:
        raise AssertionError(f"{DOC.name}: marked table {table} has no rows")
    rows: list[Row] = []
    for number, line in lines[2:]:  # after the header and the |---| line
        match = _ROW.match(line)
        if match is None:
            raise AssertionError(
                f"{DOC.name}:{number}: expected | `pipeline` | `message fragment` |, got {line!r}"
            )
        rows.append(Row(table, number, match["pipeline"], match["fragment"]))
    return rows


ROWS = read_rows(DOC.read_text(encoding="utf-8"))


def test_the_stricter_table_is_there_and_long_enough() -> None:
    stricter = [row for row in ROWS if row.table == 0]
    assert len(stricter) >= MIN_STRICTER_ROWS, f"only {len(stricter)} rows in the first table"


def test_pipelines_are_not_listed_twice() -> None:
    pipelines = [row.pipeline for row in ROWS]
    assert len(pipelines) == len(set(pipelines))


@pytest.mark.parametrize("row", ROWS, ids=[f"line {row.line}: {row.pipeline}" for row in ROWS])
def test_documented_rejection(row: Row) -> None:
    with pytest.raises(PipelineError) as caught:
        prepare_build("docs", row.pipeline, filename=FILENAME, env=dict(BUILD_ENV))
    message = str(caught.value)
    assert row.fragment in message, (
        f"{DOC.name}:{row.line}: the documented fragment is not in the message\n"
        f"  fragment: {row.fragment}\n  message:  {message}"
    )
    # One line of YAML: whatever is wrong, the message points at line 1 of the file.
    assert message.startswith(f"{FILENAME}:1"), message
