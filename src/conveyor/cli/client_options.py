"""The options every operator command takes to reach a server."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import click

from conveyor.cli.common import config_option

F = TypeVar("F", bound=Callable[..., object])


def client_options(fn: F) -> F:
    fn = click.option(
        "--endpoint",
        help="The server's URL (env CONVEYOR_ENDPOINT).  [default: http://127.0.0.1:8080]",
    )(fn)
    fn = click.option(
        "--api-token", help="An API token (env CONVEYOR_API_TOKEN; `conveyor server token --api`)."
    )(fn)
    return config_option(fn)
