"""Acceptance: `conveyor server` and `conveyor agent start` as separate processes, driven by
the operator CLI (`build create --wait`, `build show`, `job log`, `agent list`)."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import anyio
import pytest

from tests.cli.procs import CONVEYOR, Background, background, clean_env, conveyor

pytestmark = pytest.mark.anyio


async def _server_info(server: Background) -> tuple[str, str, str]:
    url = (await server.line_starting("Conveyor server listening on")).split()[-1]
    registration = (await server.line_starting("Agent registration token:")).split()[-1]
    api = (await server.line_starting("API token:")).split()[-1]
    return url, registration, api


async def test_server_agent_and_operator_cli(tmp_path: Path) -> None:
    data = tmp_path / "server"
    pipeline = tmp_path / "pipeline.yml"
    await anyio.Path(pipeline).write_text(
        "steps:\n"
        "  - label: greet\n"
        "    command: printf 'hello\\n\\tworld'; echo; echo done >&2\n"
        "  - wait\n"
        "  - label: after\n"
        "    command: echo second\n"
    )
    failing = tmp_path / "failing.yml"
    await anyio.Path(failing).write_text("steps:\n  - command: echo one\n  - command: exit 7\n")
    async with background("server", "--listen", "127.0.0.1:0", "--data-dir", str(data)) as server:
        url, registration, api = await _server_info(server)
        assert registration.startswith("cvr_") and api.startswith("cvt_")
        # The tokens are printed again on demand.
        shown = await conveyor("server", "token", "--data-dir", str(data))
        assert shown.stdout.strip() == registration
        shown_api = await conveyor("server", "token", "--api", "--data-dir", str(data))
        assert shown_api.stdout.strip() == api

        agent_env = clean_env(CONVEYOR_TOKEN=registration, CONVEYOR_ENDPOINT=url)
        async with background(
            "agent", "start", "--build-path", str(tmp_path / "builds"), "--name", "cli-agent",
            "--ping-interval", "2", env=agent_env,
        ) as agent:  # fmt: skip
            ops = clean_env(CONVEYOR_ENDPOINT=url, CONVEYOR_API_TOKEN=api)
            created = await conveyor(
                "build", "create", "--pipeline-file", str(pipeline), "--wait", env=ops
            )
            assert created.returncode == 0, created.stderr
            assert "Build default#1 created" in created.stdout
            assert "Build default#1: passed" in created.stdout

            shown_build = await conveyor("build", "show", "1", env=ops)
            assert shown_build.returncode == 0
            job_ids = re.findall(r"job ([0-9a-f-]{36})", shown_build.stdout)
            assert len(job_ids) == 2

            log = await anyio.run_process([*CONVEYOR, "job", "log", job_ids[0]], env=ops)
            # Exactly what the command printed, as the PTY delivered it (\r\n line ends,
            # stderr merged in order).
            assert log.stdout == b"hello\r\n\tworld\r\ndone\r\n"

            agents = await conveyor("agent", "list", env=ops)
            assert "cli-agent" in agents.stdout and "connected" in agents.stdout
            agent_id = agents.stdout.splitlines()[1].split()[-1]

            paused = await conveyor("agent", "pause", agent_id, env=ops)
            assert paused.returncode == 0 and "cli-agent: pause sent (paused)" in paused.stdout
            listed = await conveyor("agent", "list", env=ops)
            assert "connected (paused)" in listed.stdout
            resumed = await conveyor("agent", "resume", agent_id, env=ops)
            assert "resume sent (connected)" in resumed.stdout
            nothing = await conveyor("agent", "update", agent_id, env=ops)
            assert nothing.returncode == 1 and "nothing to update" in nothing.stderr
            unknown = await conveyor("agent", "pause", "no-such-agent", env=ops)
            assert unknown.returncode == 1 and "404" in unknown.stderr

            failed = await conveyor(
                "build", "create", "-f", str(failing), "--pipeline", "other", "--wait", env=ops
            )
            assert failed.returncode == 1
            assert "Build other#1: failed" in failed.stdout
            assert "exit status 7" in failed.stdout

            # One SIGTERM: the agent disconnects and exits 0.
            agent.process.send_signal(signal.SIGTERM)
            with anyio.fail_after(30):
                assert await agent.process.wait() == 0

        agents = await conveyor("agent", "list", env=ops)
        assert "no agents connected" in agents.stdout


async def test_agent_finishes_running_job_on_sigterm(tmp_path: Path) -> None:
    data = tmp_path / "server"
    marker = tmp_path / "started"
    pipeline = tmp_path / "pipeline.yml"
    await anyio.Path(pipeline).write_text(
        f"steps:\n  - command: touch {marker}; sleep 2; echo finished\n"
    )
    async with background("server", "--listen", "127.0.0.1:0", "--data-dir", str(data)) as server:
        url, registration, api = await _server_info(server)
        ops = clean_env(CONVEYOR_ENDPOINT=url, CONVEYOR_API_TOKEN=api)
        async with background(
            "agent", "start", "--endpoint", url, "--token", registration,
            "--build-path", str(tmp_path / "builds"), "--ping-interval", "2",
            env=clean_env(),
        ) as agent:  # fmt: skip
            created = await conveyor("build", "create", "-f", str(pipeline), env=ops)
            assert created.returncode == 0
            # Observing another process: poll the file it creates.
            with anyio.fail_after(30):
                while not await anyio.Path(marker).exists():
                    await anyio.sleep(0.05)
            agent.process.send_signal(signal.SIGTERM)
            with anyio.fail_after(30):
                assert await agent.process.wait() == 0
        shown = await conveyor("build", "show", "1", env=ops)
        assert "passed (exit status 0)" in shown.stdout
        job_id = re.findall(r"job ([0-9a-f-]{36})", shown.stdout)[0]
        log = await conveyor("job", "log", job_id, env=ops)
        assert log.stdout == "finished\r\n"


async def test_operator_errors_are_clear(tmp_path: Path) -> None:
    no_token = await conveyor("build", "show", "1", env=clean_env())
    assert no_token.returncode == 1
    assert "no API token" in no_token.stderr and "Traceback" not in no_token.stderr

    unreachable = await conveyor(
        "build",
        "show",
        "1",
        env=clean_env(CONVEYOR_API_TOKEN="x", CONVEYOR_ENDPOINT="http://127.0.0.1:9"),
    )
    assert unreachable.returncode == 1
    assert "cannot reach the server" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr
