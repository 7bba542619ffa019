"""run_process: exit statuses, the terminal, the session, output integrity, leftovers."""

from __future__ import annotations

import hashlib
import os
import signal
import sys
from pathlib import Path

import anyio
import pytest

from conveyor.runner.process import PTY_COLUMNS, PTY_ROWS, ProcessExit, run_process
from tests.runner.support import Output, base_env, kill_quietly, process_gone

pytestmark = pytest.mark.anyio

MODES = [pytest.param(True, id="pty"), pytest.param(False, id="pipe")]


async def run(
    argv: list[str],
    tmp_path: Path,
    *,
    use_pty: bool = True,
    env: dict[str, str] | None = None,
) -> tuple[ProcessExit, bytes]:
    output = Output()
    with anyio.fail_after(30):
        result = await run_process(
            argv,
            env=env if env is not None else base_env(),
            cwd=tmp_path,
            on_output=output,
            use_pty=use_pty,
        )
    return result, bytes(output.data)


def bash(script: str) -> list[str]:
    return ["bash", "-c", script]


# --- exit statuses ---------------------------------------------------------------------------


@pytest.mark.parametrize("use_pty", MODES)
@pytest.mark.parametrize("status", [0, 1, 42])
async def test_exit_status_is_the_commands_own(tmp_path: Path, use_pty: bool, status: int) -> None:
    result, _ = await run(bash(f"exit {status}"), tmp_path, use_pty=use_pty)
    assert result == ProcessExit(status=status, signal=None)


async def test_child_killed_by_signal_under_the_shell_gives_128_plus_n(tmp_path: Path) -> None:
    # The shell itself exits normally, with the status it saw for its child: 128 + 9.
    result, _ = await run(bash("sleep 30 & kill -KILL $!; wait $!"), tmp_path)
    assert result == ProcessExit(status=137, signal=None)


@pytest.mark.parametrize(
    ("signame", "status"), [("TERM", 143), ("KILL", 137), ("INT", 130), ("HUP", 129)]
)
async def test_command_killed_by_signal_gives_128_plus_n_and_the_signal(
    tmp_path: Path, signame: str, status: int
) -> None:
    # Here the process run_process started is the one killed: the status is mapped like a
    # shell would, and the signal is named.
    result, _ = await run(["sh", "-c", f"kill -{signame} $$"], tmp_path)
    assert result == ProcessExit(status=status, signal=f"SIG{signame}")


# --- the terminal ----------------------------------------------------------------------------


async def test_pty_output_has_crlf_and_stderr_merged(tmp_path: Path) -> None:
    result, data = await run(bash("echo out; echo err >&2; printf 'a\\nb'"), tmp_path)
    assert result.status == 0
    assert data == b"out\r\nerr\r\na\r\nb"


async def test_pipe_mode_keeps_newlines_and_merges_stderr(tmp_path: Path) -> None:
    result, data = await run(
        bash("echo out; echo err >&2; printf 'a\\nb'"), tmp_path, use_pty=False
    )
    assert result.status == 0
    assert data == b"out\nerr\na\nb"


async def test_pty_mode_gives_a_terminal_on_every_stream(tmp_path: Path) -> None:
    script = "if test -t 0 && test -t 1 && test -t 2; then echo tty; else echo notty; fi; stty size"
    _, data = await run(bash(script), tmp_path)
    assert data == f"tty\r\n{PTY_ROWS} {PTY_COLUMNS}\r\n".encode()


async def test_pipe_mode_gives_no_terminal_and_an_empty_stdin(tmp_path: Path) -> None:
    script = "if test -t 0 || test -t 1 || test -t 2; then echo tty; else echo notty; fi; wc -c"
    _, data = await run(bash(script), tmp_path, use_pty=False)
    assert data.split() == [b"notty", b"0"]


@pytest.mark.parametrize("use_pty", MODES)
async def test_child_leads_its_own_session_and_process_group(tmp_path: Path, use_pty: bool) -> None:
    # cat is the process run_process starts; /proc/self/stat: pid (comm) state ppid pgrp sid
    _, data = await run(["cat", "/proc/self/stat"], tmp_path, use_pty=use_pty)
    pid = int(data.split(b" ", 1)[0])
    ppid, pgrp, sid = (int(f) for f in data.rsplit(b")", 1)[1].split()[1:4])
    assert ppid == os.getpid()
    assert pgrp == pid
    assert sid == pid
    assert sid != os.getsid(0)


async def test_env_is_exactly_the_one_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVEYOR_TEST_PARENT_ONLY", "leaked")
    env = base_env(GREETING="hello world", EMPTY="", QUOTE='it\'s "quoted"')
    _, data = await run(["env"], tmp_path, env=env, use_pty=False)
    assert sorted(data.decode().splitlines()) == sorted(f"{k}={v}" for k, v in env.items())


async def test_cwd_is_the_one_given(tmp_path: Path) -> None:
    workdir = tmp_path / "work dir"
    await anyio.Path(workdir).mkdir()
    output = Output()
    result = await run_process(
        bash("pwd -P"), env=base_env(), cwd=workdir, on_output=output, use_pty=False
    )
    assert result.status == 0
    assert bytes(output.data) == f"{await anyio.Path(workdir).resolve()}\n".encode()


async def test_missing_executable_raises_oserror(tmp_path: Path) -> None:
    output = Output()
    with pytest.raises(FileNotFoundError):
        await run_process(["/nonexistent/program"], env=base_env(), cwd=tmp_path, on_output=output)
    assert output.data == b""


async def test_no_file_descriptor_is_leaked(tmp_path: Path) -> None:
    async def open_fds() -> int:
        return len([p async for p in anyio.Path("/proc/self/fd").iterdir()])

    before = await open_fds()
    for use_pty in (True, False):
        await run(bash("echo hi"), tmp_path, use_pty=use_pty)
        with pytest.raises(FileNotFoundError):
            await run(["/nonexistent/program"], tmp_path, use_pty=use_pty)
        with anyio.move_on_after(0.2):
            await run(bash("sleep 30"), tmp_path, use_pty=use_pty)
    assert await open_fds() == before


# --- output integrity ------------------------------------------------------------------------


@pytest.mark.parametrize("use_pty", MODES)
async def test_large_output_arrives_complete_and_in_order(tmp_path: Path, use_pty: bool) -> None:
    count = 2_700_000  # `seq` prints ~20 MB
    expected = "".join(f"{i}\n" for i in range(1, count + 1)).encode()
    if use_pty:
        expected = expected.replace(b"\n", b"\r\n")  # the terminal's ONLCR
    digest = hashlib.sha256()
    received = 0

    async def on_output(data: bytes) -> None:
        nonlocal received
        digest.update(data)
        received += len(data)

    with anyio.fail_after(60):
        result = await run_process(
            ["seq", "1", str(count)],
            env=base_env(),
            cwd=tmp_path,
            on_output=on_output,
            use_pty=use_pty,
        )
    assert result.status == 0
    assert received == len(expected) > 20_000_000
    assert digest.hexdigest() == hashlib.sha256(expected).hexdigest()


@pytest.mark.parametrize("use_pty", MODES)
async def test_slow_consumer_loses_nothing(tmp_path: Path, use_pty: bool) -> None:
    """on_output that yields and waits is backpressure, not a reason to drop output."""
    output = Output()

    async def slow(data: bytes) -> None:
        for _ in range(5):
            await anyio.lowlevel.checkpoint()
        await output(data)

    expected = "".join(f"line {i}\n" for i in range(20_000)).encode()
    if use_pty:
        expected = expected.replace(b"\n", b"\r\n")
    with anyio.fail_after(30):
        result = await run_process(
            bash('for i in $(seq 0 19999); do echo "line $i"; done'),
            env=base_env(),
            cwd=tmp_path,
            on_output=slow,
            use_pty=use_pty,
        )
    assert result.status == 0
    assert bytes(output.data) == expected


# --- a process left behind holding the terminal ----------------------------------------------


LEFTOVER = """
import signal, subprocess, sys
signal.signal(signal.SIGHUP, signal.SIG_IGN)  # like nohup; the child inherits it
print("started", flush=True)
child = subprocess.Popen(["sleep", "20"])  # inherits the terminal as stdout/stderr
with open(sys.argv[1], "w") as f:
    f.write(str(child.pid))
print("done", flush=True)
"""


@pytest.mark.parametrize("use_pty", MODES)
async def test_background_child_holding_the_terminal_does_not_hold_the_run(
    tmp_path: Path, use_pty: bool
) -> None:
    # The command exits at once; the leftover keeps the terminal open, silent, for 20 s and
    # ignores the terminal's hangup. (A Python command rather than bash: bash, as a session
    # leader, hangs up its terminal on exit, which hides the problem in PTY mode.)
    pidfile = tmp_path / "leftover.pid"
    output = Output()
    started = anyio.current_time()
    try:
        # Bounded: if the run hangs, cancelling kills the group, leftover included.
        with anyio.move_on_after(3) as hung:
            result = await run_process(
                [sys.executable, "-c", LEFTOVER, str(pidfile)],
                env=base_env(),
                cwd=tmp_path,
                on_output=output,
                use_pty=use_pty,
            )
        elapsed = anyio.current_time() - started
        assert not hung.cancelled_caught, "run_process waited for the leftover process"
        assert result.status == 0
        assert elapsed < 2
        assert b"done" in output.data
        # It really was still running: the early return was not because it had died.
        leftover = int(await anyio.Path(pidfile).read_text())
        assert not await process_gone(leftover)
    finally:
        if await anyio.Path(pidfile).exists():
            kill_quietly(int(await anyio.Path(pidfile).read_text()))


async def test_on_output_error_stops_the_process_and_propagates(tmp_path: Path) -> None:
    class Refused(Exception):
        pass

    seen = Output()

    async def on_output(data: bytes) -> None:
        await seen(data)
        if b"\n" in seen.data:
            raise Refused

    started = anyio.current_time()
    # Raised from the output task, it may come wrapped in the task group's ExceptionGroup.
    with pytest.RaisesGroup(Refused, allow_unwrapped=True):
        await run_process(
            bash("echo $$; sleep 30"),
            env=base_env(),
            cwd=tmp_path,
            on_output=on_output,
            cancel_grace=10,
        )
    assert anyio.current_time() - started < 5
    assert await process_gone(int(seen.data.split()[0]))


async def test_signal_without_a_name_still_gets_one(tmp_path: Path) -> None:
    # A real-time signal has no name in signal.Signals' common set on every platform.
    rt = signal.SIGRTMIN + 3
    result, _ = await run(["sh", "-c", f"kill -{int(rt)} $$"], tmp_path)
    assert result.status == 128 + rt
    assert result.signal is not None
    assert result.signal.startswith("SIG")
