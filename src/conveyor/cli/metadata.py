"""`conveyor meta-data set / get / exists / keys`, from inside a job."""

from __future__ import annotations

import click


@click.group("meta-data")
def meta_data() -> None:
    """Build-wide key/value data, shared by every job of the build."""
