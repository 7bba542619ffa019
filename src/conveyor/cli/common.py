"""What every command shares: loading settings, logging, and turning errors into messages."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click
from pydantic import BaseModel

from conveyor.config import load_settings
from conveyor.errors import APIError, ConfigError, ConveyorError

P = ParamSpec("P")
R = TypeVar("R")
M = TypeVar("M", bound=BaseModel)

config_option = click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    envvar="CONVEYOR_CONFIG",
    help="YAML file of settings, keyed by flag name (e.g. `spawn: 2`). Env: CONVEYOR_CONFIG.",
)


def settings(
    model: type[M],
    flags: Mapping[str, object],
    config_file: Path | None,
    prefixes: Sequence[str] = ("CONVEYOR_",),
) -> M:
    """Settings from flags > CONVEYOR_* env > config file > defaults; warnings go to stderr."""
    loaded = load_settings(
        model, flags=flags, env=os.environ, config_file=config_file, env_prefixes=prefixes
    )
    for warning in loaded.warnings:
        click.echo(f"conveyor: warning: {warning}", err=True)
    return loaded.settings


def setup_logging(level: str = "info") -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # One line per HTTP request is noise at info level.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, as task groups raise them."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _exit_for(exc: BaseException) -> int | None:
    """Print the message for a known failure and return the exit status; None if unknown."""
    if isinstance(exc, ConfigError):
        click.echo(f"conveyor: configuration error: {exc}", err=True)
        return 2
    if isinstance(exc, APIError):
        click.echo(f"conveyor: {exc}", err=True)
        return 1
    if isinstance(exc, ConveyorError):
        click.echo(f"conveyor: error: {exc}", err=True)
        return 1
    if isinstance(exc, KeyboardInterrupt):
        click.echo("conveyor: interrupted", err=True)
        return 130
    if isinstance(exc, BrokenPipeError):
        # Output went to a pipe that was closed (`| head`): nothing more to say.
        return 1
    return None


def friendly_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Users get one clear line on stderr and an exit status, never a traceback.

    An unexpected error is reported in one line too; CONVEYOR_DEBUG=1 shows its traceback.
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (SystemExit, click.exceptions.Exit, click.ClickException):
            raise
        except BaseException as exc:
            for leaf in _leaves(exc):
                if isinstance(leaf, SystemExit):
                    raise leaf from None
                status = _exit_for(leaf)
                if status is not None:
                    sys.exit(status)
            if os.environ.get("CONVEYOR_DEBUG"):
                raise
            first = _leaves(exc)[0]
            click.echo(
                f"conveyor: internal error: {type(first).__name__}: {first} "
                "(set CONVEYOR_DEBUG=1 for the traceback)",
                err=True,
            )
            sys.exit(70)

    return wrapper


def read_pipeline_text(path: Path) -> str:
    """A pipeline file's text (`-`: standard input), or a clear error."""
    try:
        if str(path) == "-":
            return sys.stdin.read()
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConveyorError(f"{path} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except OSError as exc:
        raise ConveyorError(f"cannot read {path}: {exc.strerror}") from None


def given(**flags: Any) -> dict[str, object]:
    """The flags the user gave (click passes None for the rest)."""
    return {k: v for k, v in flags.items() if v is not None}
