"""One job, start to end: spawn the command, stream its log, map how it ended."""

from __future__ import annotations

import contextlib
import logging
import shlex
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import anyio

from conveyor.protocol import SignalReason
from conveyor.runner.logstream import MAX_LOG_SIZE, LogSink, LogStreamer
from conveyor.runner.process import run_process
from conveyor.runner.redactor import DEFAULT_REDACTED_VARS, Redactor, secret_values

log = logging.getLogger("conveyor.runner")


class OutputTee(Protocol):
    """A second reader of the job's output (e.g. `conveyor run` printing it live).

    `write` may wait (a terminal that is slow to take output), which holds up the job's output
    as a slow terminal would.
    """

    async def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class JobRun:
    """What to run and how."""

    command: str
    env: dict[str, str]
    cwd: Path
    shell: str = "/bin/bash -e -c"
    use_pty: bool = True
    chunk_max_size: int = 1024 * 1024
    chunk_interval: float = 1.0
    cancel_signal: int = signal.SIGTERM
    cancel_grace: float = 10.0
    redacted_vars: tuple[str, ...] = DEFAULT_REDACTED_VARS
    """Names (globs) of the variables of `env` whose values never reach the log."""
    max_log_size: int = MAX_LOG_SIZE
    """Bytes of log stored; past them, output is dropped (with one notice line)."""
    argv: tuple[str, ...] = ()
    """The job executor's command line, which runs hooks and then the command (read from
    `env`); empty: the command is run directly by `shell`."""


@dataclass(frozen=True)
class JobResult:
    exit_status: int
    signal: str | None
    signal_reason: SignalReason | None
    chunks_failed_count: int
    log_bytes: int


class JobRunner:
    """Runs one `JobRun`; `cancel(reason)` stops it (signal, grace, SIGKILL) from outside."""

    def __init__(
        self,
        run: JobRun,
        sink: LogSink,
        *,
        tee: OutputTee | None = None,
    ) -> None:
        self.run_spec = run
        self._sink = sink
        self._tee = tee
        self._scope = anyio.CancelScope()
        self._cancel_reason: SignalReason | None = None
        # Set by a cancel that may not wait for the grace (an agent quitting at once).
        self._killed = False
        self._kill_now: anyio.Event | None = None
        self._prepared = False
        self._cwd_error: OSError | None = None
        self.redactor = Redactor()
        for name, value in sorted(secret_values(run.env, run.redacted_vars).items()):
            self.redactor.add(value, name=f"${name}")

    async def prepare(self) -> None:
        """What can be done before the job may start: its working directory. Optional; a
        caller that must wait for leave to start (the agent's start call) calls it meanwhile,
        so that `run` has that much less to do. A failure is reported by `run`."""
        try:
            await anyio.Path(self.run_spec.cwd).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._cwd_error = exc
        self._prepared = True

    def cancel(self, reason: SignalReason, *, grace: float | None = None) -> None:
        """Stop the job; before `run` it never starts. The first reason given is reported.
        `grace=0`: SIGKILL at once, also when a cancel is already waiting out its grace."""
        if self._cancel_reason is None:
            self._cancel_reason = reason
        if grace is not None and grace <= 0:
            self._killed = True
            if self._kill_now is not None:
                self._kill_now.set()
        self._scope.cancel()

    async def run(self) -> JobResult:
        spec = self.run_spec
        status, sig, reason = -1, None, None
        self._kill_now = anyio.Event()
        if self._killed:
            self._kill_now.set()
        async with LogStreamer(
            self._sink,
            max_chunk_size=spec.chunk_max_size,
            interval=spec.chunk_interval,
            max_log_size=spec.max_log_size,
        ) as streamer:

            async def emit(data: bytes) -> None:
                if self._tee is not None:
                    try:
                        await self._tee.write(data)
                    except Exception as exc:
                        # A reader that went away (a closed pipe) must not fail the job.
                        log.warning("job output can no longer be shown: %s", exc)
                        self._tee = None
                await streamer.write(data)

            async def output(data: bytes) -> None:
                # Everything the job writes passes the redactor before it is shown or sent.
                if released := self.redactor.write(data):
                    await emit(released)

            for warning in self.redactor.warnings:
                await emit(f"conveyor: warning: {warning}\r\n".encode())
            try:
                with self._scope:
                    try:
                        if not self._prepared:
                            await self.prepare()
                        if self._cwd_error is not None:
                            raise self._cwd_error
                        argv = list(spec.argv) or [*shlex.split(spec.shell), spec.command]
                        exit_ = await run_process(
                            argv,
                            env=spec.env,
                            cwd=spec.cwd,
                            on_output=output,
                            use_pty=spec.use_pty,
                            cancel_signal=spec.cancel_signal,
                            cancel_grace=spec.cancel_grace,
                            kill_now=self._kill_now,
                        )
                        status, sig = exit_.status, exit_.signal
                        if spec.argv and sig is not None:
                            # The executor itself was killed (not the command under it, whose
                            # death the executor reports as 128+N): its status is unknown.
                            status, sig = 255, None
                    except OSError as exc:
                        # The command could not even start (no shell, bad directory, ...): say so
                        # in the log, where the user will look first.
                        await output(f"conveyor: could not start the job: {exc}\r\n".encode())
                        reason = SignalReason.PROCESS_RUN_ERROR
            finally:
                if rest := self.redactor.flush():
                    await emit(rest)
                if self._tee is not None:
                    with contextlib.suppress(Exception):
                        self._tee.close()
            if self._scope.cancelled_caught:
                first = signal.SIGKILL if self._killed else spec.cancel_signal
                status, sig = -1, signal.Signals(first).name
                reason = self._cancel_reason or SignalReason.CANCEL
        return JobResult(
            exit_status=status,
            signal=sig,
            signal_reason=reason,
            chunks_failed_count=streamer.chunks_failed_count,
            log_bytes=streamer.bytes_written,
        )
