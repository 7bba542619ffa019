"""`conveyor run`: the whole pipeline on this machine, exit status = the build's result."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import anyio
import pytest

from tests.cli.procs import background, clean_env, conveyor

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[2]


async def test_example_pipeline_passes(tmp_path: Path) -> None:
    result = await conveyor("run", str(REPO / "examples" / "pipeline.yml"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # Each job's output, live, prefixed by its label.
    assert ":wave: greet │ hello\n" in out
    assert ":abacus: count │ 3\n" in out
    assert ":white_check_mark: done │ all steps passed\n" in out
    assert "Build local#1: passed" in out
    assert "Traceback" not in result.stderr


async def test_second_step_failing_exits_1(tmp_path: Path) -> None:
    await anyio.Path(tmp_path / "pipeline.yml").write_text(
        "steps:\n  - command: echo first\n  - wait\n  - label: second\n    command: exit 5\n"
    )
    result = await conveyor("run", cwd=tmp_path)  # finds ./pipeline.yml
    assert result.returncode == 1
    assert "✘ second: failed (exit status 5)" in result.stdout
    assert "Build local#1: failed" in result.stdout


async def test_default_file_and_working_tree(tmp_path: Path) -> None:
    await anyio.Path(tmp_path / ".conveyor").mkdir()
    await anyio.Path(tmp_path / ".conveyor" / "pipeline.yml").write_text(
        "steps:\n  - label: where\n    command: pwd; cat marker.txt\n"
    )
    await anyio.Path(tmp_path / "pipeline.yml").write_text("steps:\n  - command: exit 9\n")
    await anyio.Path(tmp_path / "marker.txt").write_text("from the working tree\n")
    result = await conveyor("run", "--agents", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # .conveyor/pipeline.yml wins over pipeline.yml; jobs run in the working tree itself.
    assert f"where │ {tmp_path}\n" in result.stdout
    assert "where │ from the working tree\n" in result.stdout


async def test_agent_rules_do_not_strand_local_steps(tmp_path: Path) -> None:
    """Pipelines written for a fleet route steps with `agents:`; locally every agent runs all."""
    await anyio.Path(tmp_path / "p.yml").write_text(
        "agents: {queue: builders}\n"
        "steps:\n  - label: deploy\n    agents: {queue: deploy, os: '!windows'}\n"
        "    command: echo deployed\n"
    )
    result = await conveyor("run", "p.yml", cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "deploy │ deployed\n" in result.stdout


async def test_no_pty_mode(tmp_path: Path) -> None:
    await anyio.Path(tmp_path / "p.yml").write_text(
        "steps:\n  - label: t\n    command: test -t 1 && echo tty || echo pipe\n"
    )
    pty = await conveyor("run", "p.yml", cwd=tmp_path)
    pipe = await conveyor("run", "p.yml", "--no-pty", cwd=tmp_path)
    assert "t │ tty\n" in pty.stdout
    assert "t │ pipe\n" in pipe.stdout


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("steps:\n  - command: [echo, {a: b}]\n", "p.yml:2:"),
        ("steps:\n  - label: x\n    command: echo\n  bad: [\n", "p.yml:4"),
        ("steps:\n  - trigger: [nope]\n", "p.yml:2"),
    ],
)
async def test_bad_pipeline_is_a_clear_error(tmp_path: Path, content: str, message: str) -> None:
    await anyio.Path(tmp_path / "p.yml").write_text(content)
    result = await conveyor("run", "p.yml", cwd=tmp_path)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""  # nothing ran


async def test_missing_pipeline_file(tmp_path: Path) -> None:
    result = await conveyor("run", cwd=tmp_path)
    assert result.returncode == 1
    assert "no pipeline file given and none found" in result.stderr
    given = await conveyor("run", "nope.yml", cwd=tmp_path)
    assert "pipeline file nope.yml does not exist" in given.stderr


async def test_ctrl_c_cancels_and_leaves_no_process(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    await anyio.Path(tmp_path / "p.yml").write_text(
        "steps:\n"
        "  - label: sleeper\n"
        f"    command: sleep 300 & echo $! > {pidfile}; wait\n"
        "  - wait\n"
        "  - command: echo never\n"
    )
    async with background("run", "p.yml", cwd=tmp_path) as run:
        await run.line_starting("▶ sleeper: running", timeout=60)
        # "running" is shown once the job's start is confirmed, which may be before its shell
        # has written the file: wait for the file, then for its content.
        with anyio.fail_after(30):
            while not (text := await _read_if_there(pidfile)).strip():
                await anyio.sleep(0.05)
        sleeper = int(text)
        os.kill(sleeper, 0)  # alive while the job runs
        run.process.send_signal(signal.SIGINT)
        with anyio.fail_after(30):
            assert await run.process.wait() == 130
        with anyio.fail_after(10):
            while True:
                try:
                    await run.read_line()
                except anyio.IncompleteRead:
                    break
    # Killed: gone, or a zombie for the moment until init reaps it.
    assert process_state(sleeper) in (None, "Z")
    output = "".join(run.lines)
    assert "never │" not in output
    assert "✘ sleeper: canceled (exit status -1, cancel)" in output
    # The build itself is canceled: nothing of it is left to run later.
    assert "Build local#1: canceled" in output


async def _read_if_there(path: Path) -> str:
    try:
        return await anyio.Path(path).read_text()
    except FileNotFoundError:
        return ""


def process_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


async def test_config_errors_name_key_and_source(tmp_path: Path) -> None:
    bad_env = await conveyor("agent", "start", "--token", "x", env=clean_env(CONVEYOR_SPAWN="lots"))
    assert bad_env.returncode == 2
    assert "spawn" in bad_env.stderr and "CONVEYOR_SPAWN" in bad_env.stderr

    bad_flag = await conveyor("agent", "start", "--token", "x", "--ping-interval", "2.5")
    assert bad_flag.returncode == 2
    assert "integers only" in bad_flag.stderr and "--ping-interval" in bad_flag.stderr

    config = tmp_path / "agent.yml"
    await anyio.Path(config).write_text("spawn: 2\nspwan: 3\n")
    bad_file = await conveyor("agent", "start", "--token", "x", "--config", str(config))
    assert bad_file.returncode == 2
    assert "spwan" in bad_file.stderr and "line 2" in bad_file.stderr

    no_token = await conveyor("agent", "start")
    assert no_token.returncode == 2
    assert "no registration token" in no_token.stderr
    for result in (bad_env, bad_flag, bad_file, no_token):
        assert "Traceback" not in result.stderr


async def test_agent_installs_without_server_extra() -> None:
    """The agent's import graph holds none of the server's dependencies."""
    code = (
        "import sys, conveyor.cli.main, conveyor.agent, conveyor.client\n"
        "bad = [m for m in ('sqlalchemy', 'fastapi', 'uvicorn', 'alembic', 'conveyor.server',"
        " 'conveyor.storage') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    import sys

    done = await anyio.run_process([sys.executable, "-c", code], check=False)
    assert done.returncode == 0, done.stderr.decode()
