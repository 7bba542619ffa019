"""Running the real `conveyor` command in tests."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

CONVEYOR = [sys.executable, "-m", "conveyor"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update(extra)
    return env


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


async def conveyor(
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 60,
) -> Result:
    with anyio.fail_after(timeout):
        done = await anyio.run_process(
            [*CONVEYOR, *args], env=dict(env or clean_env()), cwd=cwd, check=False
        )
    return Result(done.returncode, done.stdout.decode(), done.stderr.decode())


class Background:
    """A long-running `conveyor` process whose output lines can be awaited."""

    def __init__(self, process: Process):
        self.process = process
        assert process.stdout is not None
        self._out = BufferedByteReceiveStream(process.stdout)
        self.lines: list[str] = []

    async def read_line(self, timeout: float = 30) -> str:
        with anyio.fail_after(timeout):
            line = (await self._out.receive_until(b"\n", 65536)).decode()
        self.lines.append(line)
        return line

    async def line_starting(self, prefix: str, timeout: float = 30) -> str:
        with anyio.fail_after(timeout):
            while True:
                line = await self.read_line()
                if line.startswith(prefix):
                    return line


@asynccontextmanager
async def background(
    *args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> AsyncIterator[Background]:
    process = await anyio.open_process(
        [*CONVEYOR, *args], env=dict(env or clean_env()), cwd=cwd, start_new_session=True,
        stderr=None,
    )  # fmt: skip
    try:
        yield Background(process)
    finally:
        if process.returncode is None:
            process.kill()
        with anyio.CancelScope(shield=True):
            await process.wait()
            await process.aclose()
