"""Cancelling run_process: the cancel signal to the group, SIGKILL after the grace."""

from __future__ import annotations

import functools
import signal
from pathlib import Path

import anyio
import pytest

from conveyor.runner.process import run_process
from tests.runner.support import Output, base_env, kill_quietly, process_gone, wait_gone

pytestmark = pytest.mark.anyio


async def cancel_once(
    script: str,
    tmp_path: Path,
    output: Output,
    *,
    marker: bytes = b"ready",
    cancel_signal: int = signal.SIGTERM,
    cancel_grace: float = 10.0,
    env: dict[str, str] | None = None,
) -> float:
    """Run `bash -c script`, cancel the scope around it once `marker` is printed; return how
    long the cancelled run_process took to give control back."""
    run = functools.partial(
        run_process,
        ["bash", "-c", script],
        env=env if env is not None else base_env(),
        cwd=tmp_path,
        on_output=output,
        cancel_signal=cancel_signal,
        cancel_grace=cancel_grace,
    )
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await output.wait_for(marker)
            cancelled_at = anyio.current_time()
            tg.cancel_scope.cancel()
    assert tg.cancel_scope.cancelled_caught
    return anyio.current_time() - cancelled_at


def pids_after(output: Output, marker: bytes = b"ready") -> list[int]:
    return [int(p) for p in output.line_after(marker).split()]


@pytest.mark.parametrize(
    ("cancel_signal", "trap"),
    [(signal.SIGTERM, "TERM"), (signal.SIGINT, "INT")],
    ids=["SIGTERM", "SIGINT"],
)
async def test_cancel_sends_the_cancel_signal_and_ends_quickly(
    tmp_path: Path, cancel_signal: int, trap: str
) -> None:
    mark = tmp_path / "got-signal"
    script = f"trap 'echo {trap} > \"$MARK\"; exit 3' {trap}; sleep 30 & echo ready $$ $!; wait"
    output = Output()
    elapsed = await cancel_once(
        script, tmp_path, output, cancel_signal=cancel_signal, env=base_env(MARK=str(mark))
    )
    shell, child = pids_after(output)
    try:
        assert elapsed < 3  # far below the 10 s grace: it did not need SIGKILL
        assert (await anyio.Path(mark).read_text()).strip() == trap
        assert await process_gone(shell)
        await wait_gone(child)
    finally:
        kill_quietly(child)


async def test_command_ignoring_the_cancel_signal_is_killed_after_the_grace(
    tmp_path: Path,
) -> None:
    output = Output()
    grace = 0.5
    # TERM ignored by the shell and, inherited, by its child.
    script = "trap '' TERM; sleep 30 & echo ready $$ $!; wait"
    elapsed = await cancel_once(script, tmp_path, output, cancel_grace=grace)
    shell, child = pids_after(output)
    try:
        assert grace - 0.05 <= elapsed < grace + 2.5
        assert await process_gone(shell)
        await wait_gone(child)
    finally:
        kill_quietly(child)


async def test_background_child_in_the_group_is_killed_too(tmp_path: Path) -> None:
    output = Output()
    # The child ignores TERM (set before it is started); the shell itself dies on TERM at once.
    script = "trap '' TERM; sleep 30 & trap - TERM; echo ready $!; wait"
    elapsed = await cancel_once(script, tmp_path, output, cancel_grace=10)
    (child,) = pids_after(output)
    try:
        # The group gets SIGKILL as soon as the shell has gone, not after the grace.
        assert elapsed < 3
        await wait_gone(child)
    finally:
        kill_quietly(child)


async def test_grandchildren_in_the_group_are_killed(tmp_path: Path) -> None:
    output = Output()
    # A nested shell (TERM ignored, inherited) with a child of its own, both in the group.
    script = "trap '' TERM; bash -c 'sleep 30 & echo ready $$ $!; wait' & trap - TERM; wait"
    elapsed = await cancel_once(script, tmp_path, output)
    inner, grandchild = pids_after(output)
    try:
        assert elapsed < 3
        await wait_gone(inner)
        await wait_gone(grandchild)
    finally:
        kill_quietly(inner)
        kill_quietly(grandchild)


async def test_a_double_forked_daemon_of_the_job_is_killed(tmp_path: Path) -> None:
    """Its own session, and its parent gone (so re-parented away from the command's tree):
    the job's id in its environment still marks it as the job's."""
    output = Output()
    script = "(setsid sleep 300 & echo ready $!); sleep 30"
    env = base_env(CONVEYOR_JOB_ID="0b5e4c1e-daemon-test")
    await cancel_once(script, tmp_path, output, env=env)
    (daemon,) = pids_after(output)
    try:
        await wait_gone(daemon)
    finally:
        kill_quietly(daemon)


async def test_another_jobs_processes_are_left_alone(tmp_path: Path) -> None:
    other = await anyio.open_process(["sleep", "30"], env=base_env(CONVEYOR_JOB_ID="another-job"))
    try:
        output = Output()
        await cancel_once(
            "echo ready; sleep 30", tmp_path, output, env=base_env(CONVEYOR_JOB_ID="this-job")
        )
        assert not await process_gone(other.pid)
    finally:
        other.kill()
        await other.aclose()


async def test_cancel_while_on_output_is_blocked(tmp_path: Path) -> None:
    """A consumer stuck on backpressure does not stop the process from being stopped."""
    never = anyio.Event()
    seen = Output()

    async def on_output(data: bytes) -> None:
        await seen(data)
        await never.wait()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                functools.partial(
                    run_process,
                    ["bash", "-c", "echo ready $$; sleep 30"],
                    env=base_env(),
                    cwd=tmp_path,
                    on_output=on_output,
                    cancel_grace=10,
                )
            )
            await seen.wait_for(b"\n")
            tg.cancel_scope.cancel()
    await wait_gone(int(seen.line_after(b"ready")))


async def test_output_written_during_the_grace_is_kept(tmp_path: Path) -> None:
    output = Output()
    script = "trap 'echo cleaning up; exit 1' TERM; sleep 30 & echo ready; wait"
    await cancel_once(script, tmp_path, output, cancel_grace=5)
    assert b"cleaning up" in output.data
