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
    # A job pushed on a stream comes with its spec and token: the agent starts it without
    # accepting it first.
    JobState.ASSIGNED: frozenset(
        {
            JobState.ACCEPTED,
            JobState.RUNNING,
            JobState.SCHEDULED,
            JobState.CANCELED,
            JobState.FINISHED,
        }
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
    BLOCKED = "blocked"
    """Nothing can run until someone unblocks a block or input step."""
    FAILING = "failing"
    """A step failed; steps that do not depend on it still run."""
    PASSED = "passed"
    FAILED = "failed"
    CANCELING = "canceling"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in {BuildState.PASSED, BuildState.FAILED, BuildState.CANCELED}


_ACTIVE = frozenset(
    {
        BuildState.RUNNING,
        BuildState.BLOCKED,
        BuildState.FAILING,
        BuildState.PASSED,
        BuildState.FAILED,
        BuildState.CANCELING,
    }
)

BUILD_TRANSITIONS: dict[BuildState, frozenset[BuildState]] = {
    BuildState.SCHEDULED: _ACTIVE,
    BuildState.RUNNING: _ACTIVE - {BuildState.RUNNING},
    BuildState.BLOCKED: _ACTIVE - {BuildState.BLOCKED},
    BuildState.FAILING: _ACTIVE - {BuildState.FAILING, BuildState.PASSED},
    # A manual retry reopens a finished build.
    BuildState.PASSED: frozenset({BuildState.RUNNING}),
    BuildState.FAILED: frozenset({BuildState.RUNNING}),
    BuildState.CANCELING: frozenset({BuildState.CANCELED}),
    BuildState.CANCELED: frozenset(),
}
"""Every build state change the scheduler may make; storage refuses any other."""


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
    spec: JobSpec | None = Field(
        default=None,
        description="with job_assigned: the job with its token, to start without accepting it",
    )


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
    artifact_paths: list[str] = Field(
        default_factory=list,
        description="globs of files the agent uploads as artifacts after the command, "
        "relative to the job's working directory",
    )
    assigned_at: datetime | None = Field(
        default=None, description="when the server assigned the job to this agent"
    )


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


class PipelineUploadRequest(_Model):
    """`conveyor pipeline upload` from inside a job: steps to add to the job's build."""

    model_config = ConfigDict(extra="forbid")

    pipeline: str = Field(min_length=1, description="the pipeline YAML (or JSON) text")
    filename: str = Field(
        default="pipeline.yml", max_length=1000, description="shown in error messages"
    )
    replace: bool = Field(
        default=False, description="first remove the build's steps that have not started"
    )
    upload_id: str | None = Field(
        default=None,
        max_length=64,
        description="makes a retried upload safe: an upload of this job with the same id is "
        "answered with the first one's result and adds nothing",
    )


class PipelineUploadResponse(_Model):
    steps_added: int = Field(description="steps inserted after the uploading step")
    steps_removed: int = Field(default=0, description="pending steps removed by `replace`")
    warnings: list[str] = Field(default_factory=list)


# ---- in-job commands: meta-data, annotations, steps ------------------------------------------

META_DATA_MAX_KEY = 255
"""Characters in a meta-data key; keys have no control characters and no surrounding spaces."""

META_DATA_MAX_VALUE = 100_000
"""Bytes (UTF-8) in one meta-data value."""


class MetaDataSet(_Model):
    model_config = ConfigDict(extra="forbid")

    key: str
    value: str = Field(description="any text, up to 100,000 bytes")


class MetaDataValue(_Model):
    key: str
    value: str | None = Field(description="null when the build has no such key")


class MetaDataKeys(_Model):
    keys: list[str] = Field(description="in alphabetical order")


AnnotationStyle = Literal["default", "info", "success", "warning", "error"]


class AnnotationRequest(_Model):
    model_config = ConfigDict(extra="forbid")

    body: str = Field(description="Markdown, kept as written; up to 1 MiB")
    style: AnnotationStyle | None = Field(
        default=None, description="null: the context's current style (`default` for a new one)"
    )
    context: str = Field(
        default="default",
        min_length=1,
        max_length=255,
        description="one annotation per context: annotating again replaces (or appends to) it",
    )
    append: bool = Field(default=False, description="add to the context's body")


class AnnotationOut(_Model):
    context: str
    style: AnnotationStyle
    body: str
    job_id: str | None = Field(description="the job that last wrote it")
    created_at: datetime
    updated_at: datetime


class AnnotationRemoved(_Model):
    removed: bool = Field(description="false when the build had no annotation of that context")


class StepUpdate(_Model):
    model_config = ConfigDict(extra="forbid")

    attribute: Literal["label"] = Field(description="what to change; only `label` for now")
    value: str = Field(min_length=1, max_length=500)


class StepInfo(_Model):
    id: str
    key: str | None
    kind: str
    label: str | None
    state: str
    build_id: str


# ---- artifacts (agent API) --------------------------------------------------------------------

ARTIFACT_SHA256_HEADER = "X-Conveyor-Artifact-Sha256"
"""A header of every download: the SHA-256 (hex) of the content, to check it against."""


class ArtifactOut(_Model):
    """An artifact: a file a job uploaded, by path, with the address of its content.

    `PUT /agent/v1/jobs/{id}/artifacts?path=&size=&sha256=` uploads one (the body is the file,
    streamed); the agent API lists and serves those of the job's own build, the REST API those
    of any build.
    """

    id: str
    build_id: str
    job_id: str
    step_id: str
    step_key: str | None = Field(description="the key of the step whose job uploaded it")
    path: str = Field(description="relative to the directory the upload ran in, `/`-separated")
    size: int = Field(description="bytes")
    sha256: str = Field(description="the SHA-256 of the content, 64 lowercase hex digits")
    content_type: str
    created_at: datetime = Field(description="when it was (last) uploaded")


PingMode = Literal["auto", "ping-only", "stream-only"]


# ---- REST API (operators, the CLI, the web UI) ------------------------------------------------

REST_PREFIX = "/api/v1"


class CreateBuildRequest(_Model):
    model_config = ConfigDict(extra="forbid")

    pipeline: str | None = Field(
        default=None,
        min_length=1,
        description="the pipeline YAML (or JSON) text; without it the build runs the "
        "pipeline's stored steps (`PUT /pipelines/{slug}`)",
    )
    filename: str = Field(
        default="pipeline.yml", max_length=1000, description="shown in error messages"
    )
    branch: str = Field(
        default="main",
        max_length=255,
        description="when not given: the pipeline's default branch (main for a new pipeline)",
    )
    commit: str = Field(default="HEAD", max_length=255)
    message: str = ""
    env: dict[str, str] = Field(default_factory=dict)


class PipelineIn(_Model):
    """`PUT /pipelines/{slug}`: create a pipeline, or change the fields given."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    repository: str | None = Field(default=None, max_length=1000)
    default_branch: str | None = Field(default=None, min_length=1, max_length=255)
    steps: str | None = Field(
        default=None,
        min_length=1,
        description="the pipeline YAML a build gets when none is given; checked before it is "
        "stored. `null` removes the stored steps",
    )
    steps_file: str | None = Field(
        default=None,
        min_length=1,
        max_length=500,
        description="the file in the checkout to upload when there are no stored steps",
    )
    filename: str = Field(
        default="steps",
        max_length=1000,
        description="the name `steps` came from, shown in error messages",
    )


class PipelineOut(_Model):
    id: str
    slug: str
    name: str
    repository: str
    default_branch: str
    steps: str | None
    steps_file: str


class UnblockRequest(_Model):
    model_config = ConfigDict(extra="forbid")

    fields: dict[str, str | list[str]] = Field(
        default_factory=dict,
        description="values of the step's fields by key; they become build meta-data",
    )


class FieldOption(_Model):
    label: str
    value: str


class FieldOut(_Model):
    """A field of a block or input step."""

    kind: str = Field(description="text or select")
    key: str
    label: str
    hint: str | None = None
    required: bool = True
    default: str | list[str] | None = None
    options: list[FieldOption] = Field(default_factory=list)
    multiple: bool = False
    format: str | None = Field(default=None, description="a regex a text value must match")


class BuildRef(_Model):
    pipeline: str
    number: int
    id: str | None = None


class StepOut(_Model):
    id: str
    key: str | None
    kind: str = Field(description="command, wait, block, input, trigger or group")
    label: str | None
    state: str = Field(description="pending, running, blocked, passed, failed, skipped, not_run")
    error: str | None = Field(default=None, description="why the step failed without running")
    triggered_build: BuildRef | None = Field(
        default=None, description="for a trigger step: the build it created"
    )
    prompt: str | None = None
    fields: list[FieldOut] = Field(
        default_factory=list, description="for a block or input step: what unblocking asks for"
    )
    depends_on: list[str] = Field(default_factory=list, description="ids of steps")


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
    soft_failed: bool = Field(
        default=False, description="it failed, but its step's soft_fail says that is fine"
    )
    timed_out: bool = Field(
        default=False, description="canceled because it ran past its step's timeout_in_minutes"
    )
    step_id: str | None = None
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
    steps: list[StepOut] = Field(default_factory=list)
    meta_data: dict[str, str] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
    version: str = Field(
        default="",
        description="changes whenever the build, one of its steps or one of its jobs changes; "
        "pass it back as `after` with `wait` to be answered at the next change",
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
