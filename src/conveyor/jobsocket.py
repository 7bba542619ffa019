"""The wire of a job's agent-local services (locks, the job API): one JSON request per Unix
socket connection, one JSON answer, each a line.

    → {"token": T, "op": OP, ...}
    ← {"ok": true, "value": V} | {"ok": false, "error": message}

The agent gives each job the socket and a token of the job's own:

    CONVEYOR_LOCKS_SOCKET   path of the socket, in a directory only the agent's user can enter
    CONVEYOR_LOCKS_TOKEN    the job's token; refused for any other job, and once the job ended

A leaf module: the job executor (`runner`) and the commands used inside jobs share it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

from conveyor.errors import ConveyorError, outside_job

SOCKET_ENV = "CONVEYOR_LOCKS_SOCKET"
TOKEN_ENV = "CONVEYOR_LOCKS_TOKEN"
# Requests and answers carry whole environments (`conveyor env`): roomy, but bounded.
MAX_MESSAGE = 4 * 1024 * 1024


def encode(message: Mapping[str, object]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def from_env(env: Mapping[str, str], command: str) -> tuple[str, str]:
    """(socket path, token) of the job this runs in, or an error naming `command` outside one."""
    missing = [name for name in (SOCKET_ENV, TOKEN_ENV) if not env.get(name)]
    if missing:
        raise outside_job(command, "a job run by a Conveyor agent", missing)
    return env[SOCKET_ENV], env[TOKEN_ENV]


async def request(socket_path: str, message: Mapping[str, object]) -> object:
    """Send one request and wait for its answer, however long the service takes; its value,
    or a `ConveyorError` with the service's error."""
    try:
        stream = await anyio.connect_unix(socket_path)
    except OSError as exc:
        raise ConveyorError(
            f"cannot reach the agent's job services at {socket_path}: "
            f"{exc.strerror or exc} (has the job's agent stopped?)"
        ) from None
    async with stream:
        await stream.send(encode(message))
        try:
            line = await BufferedByteReceiveStream(stream).receive_until(b"\n", MAX_MESSAGE)
        except anyio.DelimiterNotFound:
            raise ConveyorError(
                f"the agent's answer is longer than {MAX_MESSAGE // 1024 // 1024} MiB"
            ) from None
        except (anyio.IncompleteRead, anyio.EndOfStream, anyio.BrokenResourceError):
            raise ConveyorError(
                "the agent's job services closed the connection without an answer "
                "(has the job's agent stopped?)"
            ) from None
    try:
        reply = json.loads(line)
        ok = reply["ok"] is True
        value = reply["value" if ok else "error"]
    except (ValueError, KeyError, TypeError):
        raise ConveyorError(f"the agent's job services answered nonsense: {line[:200]!r}") from None
    if not ok:
        raise ConveyorError(str(value))
    return value
