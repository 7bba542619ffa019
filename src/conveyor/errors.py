"""The exception hierarchy of Conveyor, in one place.

    ConveyorError                  anything Conveyor raises on purpose; its message is for users
    ├── ConfigError                a setting is unknown or has a bad value (names key and source)
    ├── PipelineError              a pipeline document is rejected (names file, line, step)
    ├── StorageError               the database refused or lost something
    │   ├── NotFoundError          no such build / job / agent / token
    │   └── ConflictError          a write contradicts what is stored (e.g. a chunk at an offset)
    ├── AuthError                  a token is missing, unknown or revoked
    ├── InvalidStateError          a state transition the protocol does not allow
    ├── APIError                   the server answered a client call with an error status
    │   └── JobGoneError           401/404 on a job call: the job is finished, reassigned or gone
    └── JobSetupError              a job cannot be set up to run (a plugin cannot be fetched or
                                   is not allowed, a hook cannot be run): the job fails with it

`is_retryable(exc)` is the single retry classifier: network errors, 429 and 5xx are worth
retrying; every other 4xx is final.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Imported where used: the job executor starts once per job and needs no HTTP to do so.
    import httpx


class ConveyorError(Exception):
    """Base class. `str(exc)` is a complete sentence fit to show a user."""


class ConfigError(ConveyorError):
    """A setting is unknown or invalid. `key` and `source` say which and where from."""

    def __init__(self, message: str, *, key: str | None = None, source: str | None = None):
        self.key = key
        self.source = source
        super().__init__(message)


class PipelineError(ConveyorError):
    """A pipeline document was rejected. Line and column are 1-based."""

    def __init__(
        self,
        problem: str,
        *,
        file: str = "<pipeline>",
        line: int | None = None,
        column: int | None = None,
        step: str | None = None,
    ):
        self.problem = problem
        self.file = file
        self.line = line
        self.column = column
        self.step = step
        where = file
        if line is not None:
            where += f":{line}"
            if column is not None:
                where += f":{column}"
        what = f" in step {step!r}" if step else ""
        super().__init__(f"{where}: {problem}{what}")


class StorageError(ConveyorError):
    """The database refused or lost something."""


class NotFoundError(StorageError):
    """No such entity."""


class ConflictError(StorageError):
    """A write contradicts what is already stored."""


class AuthError(ConveyorError):
    """A token is missing, unknown or revoked."""


class InvalidStateError(ConveyorError):
    """The requested state change is not allowed from the current state."""


class APIError(ConveyorError):
    """The server answered with an error status."""

    def __init__(self, status: int, message: str, *, retry_after: float | None = None):
        self.status = status
        self.retry_after = retry_after
        super().__init__(f"server answered {status}: {message}")


class JobGoneError(APIError):
    """The job's token was refused or the job no longer exists: stop working on it."""


class JobSetupError(ConveyorError):
    """A job cannot be set up to run; the message says why, in the job's log."""


def outside_job(command: str, where: str, missing: list[str], hint: str = "") -> ConveyorError:
    """The error of an in-job command run elsewhere: which of the variables the agent sets for
    a job's command are missing."""
    names = ", ".join(missing[:-1]) + " and " + missing[-1] if len(missing) > 1 else missing[0]
    return ConveyorError(
        f"`{command}` works only inside {where}: {names}"
        + (" is" if len(missing) == 1 else " are")
        + " not set (the agent sets them for the job's command)"
        + (f". {hint}" if hint else "")
    )


def is_retryable(exc: BaseException) -> bool:
    """True for failures worth another try: network errors, 429 and 5xx."""
    import httpx

    if isinstance(exc, httpx.TransportError):
        return True
    if isinstance(exc, APIError):
        return exc.status == 429 or exc.status >= 500
    return False


def api_error(response: httpx.Response, *, job_call: bool = False) -> APIError:
    """The APIError for an error response: its JSON `message`, and `Retry-After` if given.

    On a job call, 401 and 404 mean the job is gone (`JobGoneError`).
    """
    try:
        message = str(response.json().get("message", response.text))
    except (ValueError, AttributeError):
        message = response.text[:500] or response.reason_phrase
    retry_after: float | None = None
    header = response.headers.get("retry-after")
    if header is not None:
        try:
            retry_after = float(header)
        except ValueError:
            retry_after = None
    if job_call and response.status_code in (401, 404):
        return JobGoneError(response.status_code, message)
    return APIError(response.status_code, message, retry_after=retry_after)
