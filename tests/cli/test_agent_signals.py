"""The agent process's signal paths, on real `conveyor server` and `conveyor agent start`
processes: a second SIGTERM cancels running jobs; SIGQUIT (or a third SIGTERM) kills them at
once. (One SIGTERM, finishing the running job, is in test_server_agent.py.)"""

from __future__ import annotations

import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pytest

from tests.cli.procs import Background, background, clean_env, conveyor
from tests.runner.support import kill_quietly, wait_gone

pytestmark = pytest.mark.anyio

# Outlives SIGTERM (its child ignores it; it notes it in a file and waits on), so only SIGKILL
# ends it. `$$` is a `$` for the shell (a single one is interpolated at upload).
STUBBORN = (
    "trap '' TERM; sleep 300 & echo $$! > {pidfile}; trap 'touch {termed}' TERM; "
    "touch {marker}; while kill -0 $$! 2>/dev/null; do wait || true; done"
)


@dataclass
class Setup:
    agent: Background
    api: httpx.AsyncClient
    marker: Path
    pidfile: Path
    health: str
    termed: Path

    async def agent_cancelled(self) -> None:
        """Wait until the job got the cancel signal (observing another process: polling)."""
        with anyio.fail_after(10):
            while not await anyio.Path(self.termed).exists():
                await anyio.sleep(0.02)

    async def interrupted(self) -> None:
        """Wait until the agent has taken in its first signal (its status says why it stops):
        signals sent back to back can merge into one in the kernel."""
        async with httpx.AsyncClient() as http:
            with anyio.fail_after(10):
                while (await http.get(self.health)).json()["shutdown_reason"] != "interrupted":
                    await anyio.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@asynccontextmanager
async def agent_running_a_job(tmp_path: Path, grace: int) -> AsyncIterator[Setup]:
    marker, pidfile, termed = tmp_path / "started", tmp_path / "child.pid", tmp_path / "termed"
    pipeline = tmp_path / "pipeline.yml"
    command = STUBBORN.format(pidfile=pidfile, marker=marker, termed=termed)
    await anyio.Path(pipeline).write_text(f'steps:\n  - command: "{command}"\n')
    data = tmp_path / "server"
    health = f"127.0.0.1:{free_port()}"
    async with background("server", "--listen", "127.0.0.1:0", "--data-dir", str(data)) as server:
        url = (await server.line_starting("Conveyor server listening on")).split()[-1]
        registration = (await server.line_starting("Agent registration token:")).split()[-1]
        token = (await server.line_starting("API token:")).split()[-1]
        ops = clean_env(CONVEYOR_ENDPOINT=url, CONVEYOR_API_TOKEN=token)
        async with (
            background(
                "agent", "start", "--endpoint", url, "--token", registration,
                "--build-path", str(tmp_path / "builds"), "--cancel-grace-period", str(grace),
                "--health-check-addr", health, env=clean_env(),
            ) as agent,
            httpx.AsyncClient(base_url=url, headers={"Authorization": f"Token {token}"}) as api,
        ):  # fmt: skip
            created = await conveyor("build", "create", "-f", str(pipeline), env=ops)
            assert created.returncode == 0, created.stderr
            # Observing another process: poll the file its job creates.
            with anyio.fail_after(30):
                while not await anyio.Path(marker).exists():
                    await anyio.sleep(0.05)
            setup = Setup(agent, api, marker, pidfile, f"http://{health}/status.json", termed)
            try:
                yield setup
            finally:
                kill_quietly(int(pidfile.read_text()))


async def job_of(api: httpx.AsyncClient) -> dict[str, object]:
    r = await api.get("/api/v1/pipelines/default/builds/1")
    assert r.status_code == 200, r.text
    job: dict[str, object] = r.json()["jobs"][0]
    return job


async def test_second_sigterm_cancels_the_running_job(tmp_path: Path) -> None:
    async with agent_running_a_job(tmp_path, grace=1) as s:
        s.agent.process.send_signal(signal.SIGTERM)
        await s.interrupted()
        s.agent.process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            assert await s.agent.process.wait() == 0
        job = await job_of(s.api)
        assert (job["exit_status"], job["signal"], job["signal_reason"]) == (
            -1,
            "SIGTERM",
            "agent_stop",
        )
        await wait_gone(int(s.pidfile.read_text()))


@pytest.mark.parametrize("how", ["SIGQUIT", "third SIGTERM"])
async def test_sigquit_kills_running_jobs_at_once(tmp_path: Path, how: str) -> None:
    # A grace the test would notice: the kill does not wait for it.
    async with agent_running_a_job(tmp_path, grace=300) as s:
        started = anyio.current_time()
        if how == "SIGQUIT":
            s.agent.process.send_signal(signal.SIGQUIT)
        else:
            s.agent.process.send_signal(signal.SIGTERM)
            await s.interrupted()
            s.agent.process.send_signal(signal.SIGTERM)
            await s.agent_cancelled()
            s.agent.process.send_signal(signal.SIGTERM)
        with anyio.fail_after(60):
            assert await s.agent.process.wait() == 1
        # SIGKILL at once, not after the 300 s grace.
        assert anyio.current_time() - started < 20
        job = await job_of(s.api)
        assert (job["exit_status"], job["signal"], job["signal_reason"]) == (
            -1,
            "SIGKILL",
            "agent_stop",
        )
        await wait_gone(int(s.pidfile.read_text()))
