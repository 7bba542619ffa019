"""Running one job: the process (PTY, process group, signals) and the log path to a sink.

The runner is handed a `LogSink`; it never talks to a server itself, so it is tested without one.
"""

from conveyor.runner.job import AfterCommand, JobLog, JobResult, JobRun, JobRunner, OutputTee
from conveyor.runner.logstream import LogSink, LogStreamer
from conveyor.runner.process import ProcessExit, run_process

__all__ = [
    "AfterCommand",
    "JobLog",
    "JobResult",
    "JobRun",
    "JobRunner",
    "LogSink",
    "LogStreamer",
    "OutputTee",
    "ProcessExit",
    "run_process",
]
