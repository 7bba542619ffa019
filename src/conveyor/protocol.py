"""Wire models shared by the server and the agent (agent API v1), and the job state machine.

These pydantic models are the single source of the agent API's OpenAPI schema: the server
declares them as request and response bodies, and the agent's client parses with them.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

API_PREFIX = "/agent/v1"

# Bounds of the database columns: a value past them is a 422 here, not a 500 (or, on SQLite,
# silently stored) later.
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1

# Token prefixes make a leaked token recognisable and easy to scan for.
REGISTRATION_TOKEN_PREFIX = "cvr_"
AGENT_TOKEN_PREFIX = "cva_"
JOB_TOKEN_PREFIX = "cvj_"
API_TOKEN_PREFIX = "cvt_"


class JobState(enum.StrEnum):
    """Where a job is in its life. Terminal states never change again."""

    PENDING = "pending"  # waiting for the steps it depends on
    SCHEDULED = "scheduled"  # runnable: waiting for an agent
    ASSIGNED = "assigned"  # handed to one agent, not yet accepted
    ACCEPTED = "accepted"  # the agent took it and holds a job token
    RUNNING = "running"  # the command is running
    CANCELING = "canceling"  # a cancel was asked for; the agent is stopping it
    FINISHED = "finished"  # ran to an exit status (passed or failed says the status)
    CANCELED = "canceled"  # stopped before or while running
    SKIPPED = "skipped"  # never ran: a dependency failed or the build ended
    EXPIRED = "expired"  # nobody took it in time

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_JOB_STATES


TERMINAL_JOB_STATES = frozenset(
    {JobState.FINISHED, JobState.CANCELED, JobState.SKIPPED, JobState.EXPIRED}
)

JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.SCHEDULED, JobState.SKIPPED, JobState.CANCELED}),
    JobState.SCHEDULED: frozenset(
        {JobState.ASSIGNED, JobState.CANCELED, JobState.SKIPPED, JobState.EXPIRED}
    ),
    # An assigned job goes back to scheduled when its agent never accepts it.
    JobState.ASSIGNED: frozenset(
        {JobState.ACCEPTED, JobState.SCHEDULED, JobState.CANCELED, JobState.FINISHED}
    ),
    JobState.ACCEPTED: frozenset(
        {JobState.RUNNING, JobState.FINISHED, JobState.CANCELING, JobState.CANCELED}
    ),
    JobState.RUNNING: frozenset({JobState.FINISHED, JobState.CANCELING}),
    JobState.CANCELING: frozenset({JobState.CANCELED, JobState.FINISHED}),
    JobState.FINISHED: frozenset(),
    JobState.CANCELED: frozenset(),
    JobState.SKIPPED: frozenset(),
    JobState.EXPIRED: frozenset(),
}


def can_transition(old: JobState, new: JobState) -> bool:
    return new in JOB_TRANSITIONS[old]


class BuildState(enum.StrEnum):
    SCHEDULED = "scheduled"
    RUNNING = "running"
    PASSED = "passed"
    FAILED = "failed"
    CANCELING = "canceling"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in {BuildState.PASSED, BuildState.FAILED, BuildState.CANCELED}


class SignalReason(enum.StrEnum):
    """Why a job ended without an exit status of its own (exit status -1)."""

    CANCEL = "cancel"
    AGENT_STOP = "agent_stop"
    PROCESS_RUN_ERROR = "process_run_error"
    AGENT_REFUSED = "agent_refused"
    AGENT_LOST = "agent_lost"


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


# ---- register / connect / heartbeat / ping -------------------------------------------------


class RegisterRequest(_Model):
    name: str = Field(min_length=1, max_length=200)
    hostname: str = Field(default="", max_length=255)
    os: str = Field(default="", max_length=32)
    arch: str = Field(default="", max_length=32)
    version: str = Field(default="", max_length=32)
    pid: int = Field(default=0, ge=0, le=INT32_MAX)
    tags: dict[str, str] = Field(default_factory=dict)
    priority: int = Field(default=0, ge=-INT32_MAX, le=INT32_MAX)
    process_id: str | None = Field(
        default=None, max_length=36, description="the same for every worker of one agent process"
    )


class RegisterResponse(_Model):
    id: str
    name: str
    access_token: str
    ping_interval: int = Field(description="seconds between pings; agents add jitter")
    heartbeat_interval: int
    job_status_interval: int


class HeartbeatRequest(_Model):
    sent_at: AwareDatetime


class HeartbeatResponse(_Model):
    sent_at: datetime
    received_at: datetime


class PingAction(enum.StrEnum):
    IDLE = "idle"
    PAUSE = "pause"
    DISCONNECT = "disconnect"


class JobRef(_Model):
    id: str


class PingResponse(_Model):
    action: PingAction = PingAction.IDLE
    message: str = ""
    job: JobRef | None = None
    update: AgentUpdate | None = None


# ---- the stream (GET /agent/v1/stream): newline-delimited JSON, one message per line -------


class StreamMessageType(enum.StrEnum):
    RESUME = "resume"  # be idle: take jobs
    PAUSE = "pause"  # take no jobs until resumed
    DISCONNECT = "disconnect"  # finish what runs, then disconnect
    UPDATE = "update"  # the agent process's new `spawn` and/or `tags`
    JOB_ASSIGNED = "job_assigned"  # `job` is assigned to you: accept it
    CANCEL_JOB = "cancel_job"  # stop `job`
    KEEPALIVE = "keepalive"  # nothing happened; the stream is alive


class AgentUpdate(_Model):
    spawn: int | None = Field(default=None, ge=1, le=1000)
    tags: dict[str, str] | None = None


class StreamMessage(_Model):
    type: StreamMessageType
    job: JobRef | None = None
    reason: str = ""
    update: AgentUpdate | None = None


STREAM_KEEPALIVE_S = 5.0


# ---- jobs ------------------------------------------------------------------------------------


class JobSpec(_Model):
    """What an agent needs to run a job; returned by accept."""

    id: str
    build_id: str
    build_number: int
    pipeline: str
    step_key: str | None = None
    label: str
    command: str
    env: dict[str, str] = Field(default_factory=dict)
    token: str = Field(description="the job's own token: scoped to this job, revoked at finish")
    chunks_max_size_bytes: int
    chunks_interval_seconds: float
    log_max_size_bytes: int


class StartRequest(_Model):
    started_at: AwareDatetime


class ChunkAck(_Model):
    sequence: int
    offset: int
    size: int
    stored: bool = Field(description="false when this exact chunk was stored before (a retry)")


class JobStateResponse(_Model):
    id: str
    state: JobState


class FinishRequest(_Model):
    exit_status: int = Field(ge=-INT32_MAX, le=INT32_MAX)
    signal: str | None = Field(default=None, max_length=16)
    signal_reason: SignalReason | None = None
    finished_at: AwareDatetime
    chunks_failed_count: int = Field(default=0, ge=0, le=INT32_MAX)


class ErrorBody(_Model):
    message: str


PingMode = Literal["auto", "ping-only", "stream-only"]


# ---- REST API (operators, the CLI, the web UI) ------------------------------------------------

REST_PREFIX = "/api/v1"


class CreateBuildRequest(_Model):
    model_config = ConfigDict(extra="forbid")

    pipeline: str = Field(description="the pipeline YAML (or JSON) text", min_length=1)
    filename: str = Field(
        default="pipeline.yml", max_length=1000, description="shown in error messages"
    )
    branch: str = Field(default="main", max_length=255)
    commit: str = Field(default="HEAD", max_length=255)
    message: str = ""
    env: dict[str, str] = Field(default_factory=dict)


class JobOut(_Model):
    id: str
    step_key: str | None
    label: str
    command: str
    state: JobState
    attempt: int
    agent_id: str | None
    exit_status: int | None
    signal: str | None
    signal_reason: str | None
    passed: bool
    waiting_for: str | None = Field(
        default=None,
        description="for a runnable job that no connected agent can take: what it waits for, "
        "e.g. 'waiting for an agent with queue=gpu'",
    )
    log_size: int
    chunks_failed_count: int
    created_at: datetime
    runnable_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None


class BuildOut(_Model):
    id: str
    pipeline: str
    number: int
    state: BuildState
    branch: str
    commit: str
    message: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    jobs: list[JobOut] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    version: str = Field(
        default="",
        description="changes whenever the build or one of its jobs changes; pass it back as "
        "`after` with `wait` to be answered at the next change",
    )


class AgentControl(_Model):
    model_config = ConfigDict(extra="forbid")

    force: bool = Field(
        default=False, description="stop: cancel the running job instead of letting it finish"
    )


class AgentOut(_Model):
    id: str
    name: str
    hostname: str
    version: str
    state: str
    tags: dict[str, str]
    priority: int
    current_job_id: str | None
    process_id: str | None = None
    paused: bool = False
    created_at: datetime
    connected_at: datetime | None
    last_heartbeat_at: datetime | None
