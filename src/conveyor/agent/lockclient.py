"""How a job talks to its agent's lock service: the variables that find it, the wire format,
and the client the `conveyor lock` commands use.

The agent gives each job the service's Unix socket and a token of the job's own:

    CONVEYOR_LOCKS_SOCKET   path of the socket, in a directory only the agent's user can enter
    CONVEYOR_LOCKS_TOKEN    the job's token; the service refuses any other, and this one once
                            the job has ended

One request per connection, one JSON object per line each way:

    → {"token": T, "op": "acquire" | "release" | "get" | "do" | "done", "key": K,
       "lock_token": L (release), "max_wait": seconds > 0 or null for no limit (acquire, do)}
    ← {"ok": true, "value": V} | {"ok": false, "error": message}

The client keeps the connection open until the answer comes: the service takes a connection
closed before that as a request given up, and drops whatever it would have granted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from conveyor import jobsocket
from conveyor.errors import ConveyorError
from conveyor.jobsocket import MAX_MESSAGE, SOCKET_ENV, TOKEN_ENV, encode

__all__ = ["MAX_KEY", "MAX_MESSAGE", "OPS", "SOCKET_ENV", "TOKEN_ENV", "LockClient", "Op", "encode"]

MAX_KEY = 1024

Op = Literal["acquire", "release", "get", "do", "done"]
OPS: tuple[Op, ...] = ("acquire", "release", "get", "do", "done")


class LockClient:
    def __init__(self, socket_path: str, token: str):
        self.socket_path = socket_path
        self._token = token

    @classmethod
    def from_env(cls, env: Mapping[str, str], command: str) -> LockClient:
        """The client of the job this runs in, or a clear error outside one."""
        return cls(*jobsocket.from_env(env, command))

    async def call(
        self, op: Op, key: str, *, lock_token: str | None = None, max_wait: float | None = None
    ) -> str:
        """Send one request and wait for its answer, however long the service takes."""
        request: dict[str, object] = {"token": self._token, "op": op, "key": key}
        if lock_token is not None:
            request["lock_token"] = lock_token
        value = await jobsocket.request(self.socket_path, {**request, "max_wait": max_wait})
        if not isinstance(value, str):
            raise ConveyorError(f"the agent's lock service answered nonsense: {value!r:.200}")
        return value

    async def acquire(self, key: str, max_wait: float | None = None) -> str:
        return await self.call("acquire", key, max_wait=max_wait)

    async def release(self, key: str, lock_token: str) -> None:
        await self.call("release", key, lock_token=lock_token)

    async def get(self, key: str) -> str:
        return await self.call("get", key)

    async def do(self, key: str, max_wait: float | None = None) -> str:
        return await self.call("do", key, max_wait=max_wait)

    async def done(self, key: str) -> None:
        await self.call("done", key)
