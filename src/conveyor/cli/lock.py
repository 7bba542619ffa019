"""`conveyor lock acquire / release / do / done`: locks shared by the jobs of one agent host."""

from __future__ import annotations

import click


@click.group()
def lock() -> None:
    """Locks shared by every job of the agents on this machine."""
