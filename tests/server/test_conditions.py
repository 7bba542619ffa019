"""Branch filters as Buildkite reads them (the `skip` and `if` rules run through the scheduler's
tests, which need a stored build)."""

from __future__ import annotations

import pytest

from conveyor.server.conditions import branch_matches


@pytest.mark.parametrize(
    ("branch", "patterns", "runs"),
    [
        ("main", ["main"], True),
        ("main", ["release/*"], False),
        ("release/1.2", ["release/*"], True),
        ("release/1.2", ["release/*", "!release/1.2"], False),
        ("feature/x", ["!main"], True),
        ("main", ["!main"], False),
        ("anything", [], True),
        ("main", ["dev", "main"], True),
    ],
)
def test_branch_filters(branch: str, patterns: list[str], runs: bool) -> None:
    assert branch_matches(branch, patterns) is runs
