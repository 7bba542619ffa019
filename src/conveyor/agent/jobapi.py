"""The job API: what a running job asks of its agent, besides locks, on the same socket.

    conveyor env dump | get | set | unset     the job's environment for the phases after this
    conveyor redactor add                     a value to redact from the rest of the log

Per job, the agent keeps the environment the job's executor last gave it (`env.sync`, before
each hook and the command; the job's own env when there is no executor). `env set/unset`
change that copy; the executor reads the changes back when the hook or command that made them
ends (`env.get`), and the phases after it see them. Variables that tie the job to its agent
and server (`runner.hooks.PROTECTED`) cannot be set or unset this way.

Redaction happens in the agent, which reads the job's output: `redact` adds a needle to the
job's redactor at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from conveyor.runner.hooks import PROTECTED
from conveyor.runner.redactor import DEFAULT_REDACTED_VARS, secret_values

OPS = frozenset({"env.get", "env.set", "env.unset", "env.sync", "redact"})
# Names a shell can export: anything else would be dropped by the next hook anyway.
_MAX_NAME = 1024
# A secret is a token or a key, not a file: a bigger needle would cost the redactor (and the
# agent's event loop, where it compiles) far more than it could be worth.
MAX_SECRET = 64 * 1024


class JobApiError(Exception):
    """A request the job API refuses; the message goes back to the caller."""


Redact = Callable[[str], bool]


@dataclass
class JobState:
    env: dict[str, str] = field(default_factory=dict)
    redact: Redact | None = None
    redacted_vars: tuple[str, ...] = DEFAULT_REDACTED_VARS


def _names(value: object, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
        raise JobApiError(f"'{what}' must be a list of variable names")
    return value


def _env(value: object) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise JobApiError("'env' must be an object of names to string values")
    return value


def _check_names(names: list[str]) -> None:
    for name in names:
        if not name or "=" in name or "\0" in name or len(name) > _MAX_NAME:
            raise JobApiError(f"{name!r} is not a variable name")
    protected = sorted(set(names) & PROTECTED)
    if protected:
        raise JobApiError(f"{', '.join(protected)} cannot be changed by a job")


def perform(state: JobState, request: Mapping[str, object]) -> object:
    """The answer to one job API request (its `op` is in OPS)."""
    op = request.get("op")
    if op == "env.get":
        return dict(state.env)
    if op == "env.sync":
        new = dict(_env(request.get("env")))
        # A hook that exported a secret (fetched it from a vault, say): redacted from then on.
        old = secret_values(state.env, state.redacted_vars)
        for name, secret in sorted(secret_values(new, state.redacted_vars).items()):
            if old.get(name) != secret and state.redact is not None and len(secret) <= MAX_SECRET:
                state.redact(secret)
        state.env = new
        return None
    if op == "env.set":
        changes = _env(request.get("env"))
        _check_names(list(changes))
        state.env.update(changes)
        return None
    if op == "env.unset":
        names = _names(request.get("names"), "names")
        _check_names(names)
        for name in names:
            state.env.pop(name, None)
        return None
    value = request.get("value")
    if not isinstance(value, str) or not value:
        raise JobApiError("'value' must be a non-empty string")
    if len(value.encode()) > MAX_SECRET:
        raise JobApiError(f"a value to redact may be at most {MAX_SECRET // 1024} KiB")
    if state.redact is None:
        raise JobApiError("this job's output is not being read any more")
    return state.redact(value)
