"""Go-style scalar formatting."""

from __future__ import annotations

import pytest

from conveyor.pipeline.scalars import Scalar, go_string


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ""),
        (True, "true"),
        (False, "false"),
        (42, "42"),
        (-7, "-7"),
        (10**20, "100000000000000000000"),
        ("text", "text"),
        ("", ""),
        (2.5, "2.5"),
        (2.71828, "2.71828"),
        (100.0, "100"),
        (-3.0, "-3"),
        (0.0, "0"),
        (-0.0, "-0"),
        (0.1, "0.1"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (1.5e-7, "1.5e-07"),
        (123456.0, "123456"),
        (999999.5, "999999.5"),
        (1000000.0, "1e+06"),
        (1234567.0, "1.234567e+06"),
        (1e21, "1e+21"),
        (1.25e100, "1.25e+100"),
        (float("inf"), "+Inf"),
        (float("-inf"), "-Inf"),
        (float("nan"), "NaN"),
    ],
)
def test_go_string(value: Scalar, expected: str) -> None:
    assert go_string(value) == expected
