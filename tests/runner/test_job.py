"""JobRunner: one job end to end into an in-memory sink, cancellation, start failures."""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path
from typing import Any

import anyio
import pytest

from conveyor.logformat import strip
from conveyor.protocol import SignalReason
from conveyor.runner.job import JobResult, JobRun, JobRunner
from tests.runner.support import (
    Changes,
    FailingSink,
    RecordingSink,
    base_env,
    kill_quietly,
    wait_gone,
)

pytestmark = pytest.mark.anyio


class RecordingTee:
    """An OutputTee keeping what it is given; `wait_for` a marker in the output."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.writes_after_close = 0
        self.close_calls = 0
        self.changes = Changes()

    async def write(self, data: bytes) -> None:
        if self.close_calls:
            self.writes_after_close += 1
        self.data += data
        self.changes.notify()

    def close(self) -> None:
        self.close_calls += 1

    async def wait_for(self, marker: bytes) -> None:
        await self.changes.wait_until(lambda: marker in self.data)

    def line_after(self, marker: bytes) -> bytes:
        start = self.data.index(marker) + len(marker)
        return bytes(self.data[start : self.data.index(b"\n", start)]).strip()


def job(command: str, tmp_path: Path, **overrides: Any) -> JobRun:
    return JobRun(
        command=command,
        env=overrides.pop("env", base_env()),
        cwd=overrides.pop("cwd", tmp_path),
        chunk_interval=overrides.pop("chunk_interval", 0.05),
        **overrides,
    )


async def run_job(
    run: JobRun, sink: RecordingSink | None = None, tee: RecordingTee | None = None
) -> tuple[JobResult, RecordingSink]:
    sink = sink if sink is not None else RecordingSink()
    with anyio.fail_after(30):
        result = await JobRunner(run, sink, tee=tee).run()
    return result, sink


async def cancel_when_ready(
    runner: JobRunner, tee: RecordingTee, reason: SignalReason
) -> tuple[JobResult, float]:
    """Run the job, `cancel(reason)` once it printed "ready"; (result, seconds the run took
    after the cancel)."""
    result: JobResult | None = None

    async def run() -> None:
        nonlocal result
        result = await runner.run()

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await tee.wait_for(b"ready")
            cancelled_at = anyio.current_time()
            runner.cancel(reason)
    assert result is not None
    return result, anyio.current_time() - cancelled_at


async def test_echo_succeeds_and_its_output_reaches_the_sink(tmp_path: Path) -> None:
    result, sink = await run_job(job("echo hi", tmp_path))
    assert result == JobResult(
        exit_status=0, signal=None, signal_reason=None, chunks_failed_count=0, log_bytes=4
    )
    assert strip(sink.data) == b"hi\r\n"
    sink.assert_well_formed(max_chunk_size=1024 * 1024)


@pytest.mark.parametrize(("command", "status"), [("exit 3", 3), ("false; echo after", 1)])
async def test_failing_command_gives_its_status(tmp_path: Path, command: str, status: int) -> None:
    # The default shell is `bash -e -c`: the first failing command ends the job.
    result, sink = await run_job(job(command, tmp_path))
    assert result.exit_status == status
    assert result.signal is None
    assert result.signal_reason is None
    assert b"after" not in sink.data


async def test_tee_gets_the_same_bytes_and_is_closed_once(tmp_path: Path) -> None:
    tee = RecordingTee()
    command = 'for i in $(seq 1 2000); do echo "line $i"; done; echo err >&2'
    result, sink = await run_job(job(command, tmp_path, chunk_max_size=1000), tee=tee)
    expected = "".join(f"line {i}\r\n" for i in range(1, 2001)).encode() + b"err\r\n"
    assert result.exit_status == 0
    assert bytes(tee.data) == expected
    assert strip(sink.data) == expected
    assert result.log_bytes == len(expected)
    sink.assert_well_formed(max_chunk_size=1000)
    assert tee.close_calls == 1
    assert tee.writes_after_close == 0


async def test_a_failing_tee_does_not_fail_the_job_or_lose_log(tmp_path: Path) -> None:
    class BrokenTee(RecordingTee):
        async def write(self, data: bytes) -> None:
            raise BrokenPipeError("the reader went away")

    command = "echo one; echo two"
    result, sink = await run_job(job(command, tmp_path), tee=BrokenTee())
    assert result.exit_status == 0
    assert strip(sink.data) == b"one\r\ntwo\r\n"
    assert result.log_bytes == len(strip(sink.data))


async def test_the_shell_is_configurable(tmp_path: Path) -> None:
    result, sink = await run_job(job('echo "$0"; exit 5', tmp_path, shell="/bin/sh -c"))
    assert result.exit_status == 5
    assert strip(sink.data) == b"/bin/sh\r\n"


async def test_pipe_mode_job(tmp_path: Path) -> None:
    result, sink = await run_job(job("echo one; echo two >&2", tmp_path, use_pty=False))
    assert result.exit_status == 0
    assert strip(sink.data) == b"one\ntwo\n"


async def test_env_and_cwd_reach_the_command(tmp_path: Path) -> None:
    workdir = tmp_path / "builds" / "agent-1" / "pipeline"  # does not exist yet
    run = job('echo "$CONVEYOR_JOB_ID"; pwd -P', tmp_path, cwd=workdir)
    run = dataclasses.replace(run, env=base_env(CONVEYOR_JOB_ID="job-123"))
    result, sink = await run_job(run)
    assert result.exit_status == 0
    assert await anyio.Path(workdir).is_dir()
    resolved = await anyio.Path(workdir).resolve()
    assert strip(sink.data) == f"job-123\r\n{resolved}\r\n".encode()


async def test_failed_chunks_are_reported(tmp_path: Path) -> None:
    sink = FailingSink(fail_sequences=frozenset({1}))
    command = "head -c 3000 /dev/zero | tr '\\0' x"
    result, _ = await run_job(job(command, tmp_path, chunk_max_size=1000), sink=sink)
    assert result.exit_status == 0
    assert result.chunks_failed_count == 1
    assert result.log_bytes == 3000
    assert sink.refused == [1]
    # Every other chunk arrived: they cover the log from the end of chunk 1 to its end.
    stored = sink.ordered
    assert [c.sequence for c in stored] == list(range(2, len(stored) + 2))
    first = stored[0].offset
    assert 0 < first <= 1000
    # What arrived is the rest of the output (chunk 1 held the line's timestamp marker too).
    rest = strip(sink.data)
    assert rest == b"x" * len(rest)
    assert 3000 - first <= len(rest) < 3000


# --- cancellation ----------------------------------------------------------------------------


@pytest.mark.parametrize("reason", [SignalReason.AGENT_STOP, SignalReason.CANCEL])
async def test_cancel_stops_the_job_with_the_reason(tmp_path: Path, reason: SignalReason) -> None:
    tee = RecordingTee()
    grace = 5.0
    runner = JobRunner(
        job("echo ready; sleep 30", tmp_path, cancel_grace=grace), RecordingSink(), tee=tee
    )
    result, elapsed = await cancel_when_ready(runner, tee, reason)
    assert result.exit_status == -1
    assert result.signal == "SIGTERM"
    assert result.signal_reason == reason
    assert elapsed < grace
    assert tee.close_calls == 1


async def test_cancelled_job_keeps_the_log_written_before(tmp_path: Path) -> None:
    tee = RecordingTee()
    sink = RecordingSink()
    runner = JobRunner(job("echo before; echo ready; sleep 30", tmp_path), sink, tee=tee)
    result, _ = await cancel_when_ready(runner, tee, SignalReason.CANCEL)
    assert result.exit_status == -1
    assert strip(sink.data) == b"before\r\nready\r\n"
    assert result.log_bytes == len(strip(sink.data))


async def test_cancel_reports_the_configured_signal_and_the_first_reason(tmp_path: Path) -> None:
    tee = RecordingTee()
    run = job("echo ready; sleep 30", tmp_path, cancel_signal=signal.SIGINT, cancel_grace=0.5)
    runner = JobRunner(run, RecordingSink(), tee=tee)
    result, _ = await cancel_when_ready(runner, tee, SignalReason.CANCEL)
    runner.cancel(SignalReason.AGENT_STOP)  # a later reason does not replace the first
    assert result.signal == "SIGINT"
    assert result.signal_reason == SignalReason.CANCEL


async def test_job_ignoring_the_cancel_signal_is_killed_after_the_grace(tmp_path: Path) -> None:
    tee = RecordingTee()
    grace = 0.5
    run = job("trap '' TERM; sleep 30 & echo ready $!; wait", tmp_path, cancel_grace=grace)
    runner = JobRunner(run, RecordingSink(), tee=tee)
    result, elapsed = await cancel_when_ready(runner, tee, SignalReason.AGENT_STOP)
    child = int(tee.line_after(b"ready"))
    try:
        assert result.exit_status == -1
        assert result.signal == "SIGTERM"
        assert result.signal_reason == SignalReason.AGENT_STOP
        assert grace - 0.05 <= elapsed < grace + 2.5
        await wait_gone(child)
    finally:
        kill_quietly(child)


async def test_cancel_before_run_never_starts_the_command(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    runner = JobRunner(job(f"touch {marker}", tmp_path), RecordingSink())
    runner.cancel(SignalReason.AGENT_STOP)
    with anyio.fail_after(10):
        result = await runner.run()
    assert result.exit_status == -1
    assert result.signal_reason == SignalReason.AGENT_STOP
    assert not await anyio.Path(marker).exists()


async def test_cancel_leaves_no_descendant_running_even_in_its_own_session(
    tmp_path: Path,
) -> None:
    tee = RecordingTee()
    # "ready" is printed from inside the new session, so it has been left when we cancel.
    run = job("setsid sh -c 'echo ready $$; exec sleep 30' & wait", tmp_path, cancel_grace=0.5)
    runner = JobRunner(run, RecordingSink(), tee=tee)
    await cancel_when_ready(runner, tee, SignalReason.CANCEL)
    escaped = int(tee.line_after(b"ready"))
    try:
        await wait_gone(escaped, timeout=2)
    finally:
        kill_quietly(escaped)


async def test_tee_is_closed_when_the_run_is_cancelled_from_outside(tmp_path: Path) -> None:
    tee = RecordingTee()
    runner = JobRunner(job("echo ready; sleep 30", tmp_path), RecordingSink(), tee=tee)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner.run)
            await tee.wait_for(b"ready")
            tg.cancel_scope.cancel()
    assert tee.close_calls == 1


# --- the job cannot start --------------------------------------------------------------------


async def test_missing_shell_is_a_process_run_error_with_a_log_line(tmp_path: Path) -> None:
    tee = RecordingTee()
    result, sink = await run_job(job("echo hi", tmp_path, shell="/nonexistent/sh -c"), tee=tee)
    assert result.exit_status == -1
    assert result.signal is None
    assert result.signal_reason == SignalReason.PROCESS_RUN_ERROR
    assert strip(sink.data).startswith(b"conveyor: could not start the job: ")
    assert b"/nonexistent/sh" in sink.data
    assert strip(sink.data).endswith(b"\r\n")
    assert bytes(tee.data) == strip(sink.data)
    assert result.log_bytes == len(strip(sink.data))
    assert tee.close_calls == 1


async def test_unusable_working_directory_is_a_process_run_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    await anyio.Path(blocker).write_text("not a directory")
    result, sink = await run_job(job("echo hi", tmp_path, cwd=blocker / "sub"))
    assert result.exit_status == -1
    assert result.signal_reason == SignalReason.PROCESS_RUN_ERROR
    assert strip(sink.data).startswith(b"conveyor: could not start the job: ")


async def test_secrets_in_the_env_never_reach_the_log_or_the_tee(tmp_path: Path) -> None:
    """The values of variables named like secrets are redacted, also when the command prints
    them in pieces, escaped, or long after the start; short ones are kept, with a warning."""
    env = base_env(
        DEPLOY_API_KEY="k3y-4b2f9e1d",
        DB_PASSWORD="abc",
        PLAIN="k3y-4b2f9e1d-is-not-secret-by-name",
    )
    command = (
        "printf 'key=k3y-4b'; sleep 0.2; printf '2f9e1d\\n';"
        ' printf \'%s\\n\' "{\\"key\\": \\"$DEPLOY_API_KEY\\"}";'
        ' printf \'%s\' "$DEPLOY_API_KEY" | base64; echo "pw=$DB_PASSWORD"'
    )
    tee = RecordingTee()
    result, sink = await run_job(job(command, tmp_path, env=env), tee=tee)
    assert result.exit_status == 0
    for out in (strip(sink.data), bytes(tee.data)):
        assert b"k3y-4b2f9e1d" not in out and b"azN5LTRiMmY5ZTFk" not in out
        assert b"key=[REDACTED]\r\n" in out
        assert b'{"key": "[REDACTED]"}' in out
        assert b"pw=abc" in out
        assert out.startswith(
            b"conveyor: warning: $DB_PASSWORD is shorter than 6 bytes: it is not redacted "
            b"from the log\r\n"
        )


async def test_prepare_makes_the_working_directory_and_run_reports_its_failure(
    tmp_path: Path,
) -> None:
    made = JobRunner(job("pwd", tmp_path, cwd=tmp_path / "deep" / "dir"), RecordingSink())
    await made.prepare()
    assert await anyio.Path(tmp_path / "deep" / "dir").is_dir()
    blocker = tmp_path / "a-file"
    await anyio.Path(blocker).write_text("not a directory")
    sink = RecordingSink()
    failed = JobRunner(job("touch ran", tmp_path, cwd=blocker / "sub"), sink)
    await failed.prepare()
    result = await failed.run()
    assert (result.exit_status, result.signal_reason) == (-1, SignalReason.PROCESS_RUN_ERROR)
    assert strip(sink.data).startswith(b"conveyor: could not start the job: ")
