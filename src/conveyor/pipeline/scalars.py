"""Scalars formatted as strings the way Buildkite's Go parser formats them.

Where a pipeline expects a string (env values, agent tags) any YAML scalar is accepted and
turned into text with Go's `fmt.Sprint`: `true` → "true", `42` → "42", `2.5` → "2.5",
`1e6` → "1e+06". Python's `str()` would give "True" and "1000000.0", which is wrong here.
"""

from __future__ import annotations

import math
from decimal import Decimal

Scalar = str | int | float | bool | None
"""A plain YAML scalar after loading."""


def go_string(value: Scalar) -> str:
    """Format a scalar as Go's `fmt.Sprint` does; null becomes ""."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return go_float(value)
    return str(value)


def go_float(value: float) -> str:
    """Format a float as Go's `%v` does: shortest digits, exponent form below 1e-4 or from 1e6.

    >>> [go_float(x) for x in (2.5, 100.0, 1e6, 1.5e-5, 0.0001)]
    ['2.5', '100', '1e+06', '1.5e-05', '0.0001']
    """
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    if value == 0:
        return sign + "0"
    # repr() gives the shortest digits that read back as the same float, as Go's does.
    _, digit_tuple, exponent = Decimal(repr(abs(value))).as_tuple()
    assert isinstance(exponent, int)
    raw = "".join(str(d) for d in digit_tuple).lstrip("0")
    point = len(raw) + exponent  # the value is 0.<raw> x 10**point
    digits = raw.rstrip("0") or "0"
    power = point - 1  # the exponent in d.ddd x 10**power
    if power < -4 or power >= 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{mantissa}e{'+' if power >= 0 else '-'}{abs(power):02d}"
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return sign + digits + "0" * (point - len(digits))
    return f"{sign}{digits[:point]}.{digits[point:]}"
