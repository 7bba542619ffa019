"""JobRunner's `after_command`: work done once the command has ended (the agent uploads the
step's artifacts there), written into the job's log, able to fail a passed job, skipped for a
canceled one."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from conveyor.protocol import SignalReason
from conveyor.runner import JobLog, JobResult, JobRun, JobRunner
from tests.runner.support import Changes, RecordingSink, base_env

pytestmark = pytest.mark.anyio


class After:
    """An after-command step that writes a line and answers `ok`; counts its calls."""

    def __init__(self, ok: bool) -> None:
        self.ok = ok
        self.calls = 0

    async def __call__(self, job_log: JobLog) -> bool:
        self.calls += 1
        await job_log(b"after the command\r\n")
        return self.ok


def job(command: str, tmp_path: Path) -> JobRun:
    return JobRun(command=command, env=base_env(), cwd=tmp_path, chunk_interval=0.05)


async def run(command: str, tmp_path: Path, after: After) -> tuple[JobResult, RecordingSink]:
    sink = RecordingSink()
    with anyio.fail_after(30):
        result = await JobRunner(job(command, tmp_path), sink, after_command=after).run()
    return result, sink


@pytest.mark.parametrize(
    ("command", "ok", "status"),
    [("echo hi", True, 0), ("echo hi", False, 1), ("exit 3", True, 3), ("exit 3", False, 3)],
)
async def test_it_runs_after_the_command_whatever_its_status(
    tmp_path: Path, command: str, ok: bool, status: int
) -> None:
    after = After(ok)
    result, sink = await run(command, tmp_path, after)
    assert after.calls == 1
    assert result.exit_status == status and result.signal_reason is None
    assert sink.data.endswith(b"after the command\r\n")


async def test_a_canceled_job_skips_it(tmp_path: Path) -> None:
    after = After(True)
    sink = RecordingSink()
    runner = JobRunner(job("echo ready; sleep 30", tmp_path), sink, after_command=after)
    result: JobResult | None = None

    async def go() -> None:
        nonlocal result
        result = await runner.run()

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(go)
            await sink.changes.wait_until(lambda: b"ready" in sink.data)
            runner.cancel(SignalReason.CANCEL)
    assert result is not None
    assert result.exit_status == -1 and result.signal_reason == SignalReason.CANCEL
    assert after.calls == 0
    assert b"after the command" not in sink.data


async def test_a_cancel_while_it_runs_stops_it(tmp_path: Path) -> None:
    started = Changes()
    running = False

    class Slow:
        async def __call__(self, job_log: JobLog) -> bool:
            nonlocal running
            running = True
            started.notify()
            await anyio.sleep_forever()
            raise AssertionError("unreachable")

    runner = JobRunner(job("true", tmp_path), RecordingSink(), after_command=Slow())
    result: JobResult | None = None

    async def go() -> None:
        nonlocal result
        result = await runner.run()

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(go)
            await started.wait_until(lambda: running)
            runner.cancel(SignalReason.CANCEL)
    assert result is not None
    assert result.exit_status == -1 and result.signal_reason == SignalReason.CANCEL
