"""Plain records returned by the queries: the storage layer hands out these, never SQL rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class TokenRow:
    id: str
    kind: str
    agent_id: str | None
    job_id: str | None


@dataclass(frozen=True)
class AgentRow:
    id: str
    name: str
    hostname: str
    version: str
    tags: dict[str, str]
    priority: int
    state: str
    created_at: datetime
    connected_at: datetime | None
    last_heartbeat_at: datetime | None
    last_success_at: datetime | None
    current_job_id: str | None
    process_id: str | None = None
    paused: bool = False


@dataclass(frozen=True)
class PipelineRow:
    id: str
    slug: str
    name: str
    repository: str
    default_branch: str
    steps: str | None = None
    steps_file: str = ".buildkite/pipeline.yml"


@dataclass(frozen=True)
class StepRow:
    id: str
    build_id: str
    position: int
    key: str | None
    kind: str
    label: str | None
    config: dict[str, Any]
    depends_on: list[str]
    allow_dependency_failure: bool
    state: str


@dataclass(frozen=True)
class JobRow:
    id: str
    build_id: str
    step_id: str
    state: str
    label: str
    command: str
    env: dict[str, str]
    agent_query: dict[str, str]
    priority: int
    attempt: int
    agent_id: str | None
    exit_status: int | None
    signal: str | None
    signal_reason: str | None
    chunks_failed_count: int
    log_size: int
    created_at: datetime
    runnable_at: datetime | None
    assigned_at: datetime | None
    accepted_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    concurrency_group: str | None = None
    concurrency_limit: int | None = None
    soft_fail: bool | list[int] | None = None
    soft_failed: bool = False
    timeout_minutes: int | None = None
    timed_out: bool = False

    @property
    def passed(self) -> bool:
        return self.state == "finished" and self.exit_status == 0


@dataclass(frozen=True)
class BuildRow:
    id: str
    pipeline_id: str
    pipeline_slug: str
    number: int
    state: str
    branch: str
    commit: str
    message: str
    source: str
    env: dict[str, str]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    meta_data: dict[str, str] = field(default_factory=dict)
    parent_step_id: str | None = None
    repository: str = ""
    """The pipeline's repository, which jobs check out ("" for none)."""
    jobs: list[JobRow] = field(default_factory=list)
    steps: list[StepRow] = field(default_factory=list)


@dataclass(frozen=True)
class NewStep:
    """A step to insert. `depends_on`, `allow_failure` and `children` hold positions in the list
    being inserted; `depends_on_ids` names steps already in the build (pipeline uploads)."""

    kind: str
    key: str | None
    label: str | None
    config: dict[str, Any]
    depends_on: list[int]
    allow_dependency_failure: bool = False
    jobs: list[NewJob] = field(default_factory=list)
    depends_on_ids: list[str] = field(default_factory=list)
    allow_failure: list[int] = field(default_factory=list)
    """Dependencies this step runs after even when they failed."""
    children: list[int] = field(default_factory=list)
    """For a group: its steps."""


@dataclass(frozen=True)
class NewJob:
    label: str
    command: str
    env: dict[str, str]
    agent_query: dict[str, str]
    priority: int = 0
    concurrency_group: str | None = None
    concurrency_limit: int | None = None
    soft_fail: bool | list[int] | None = None
    timeout_minutes: int | None = None


@dataclass(frozen=True)
class AnnotationRow:
    context: str
    style: str
    body: str
    job_id: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class ArtifactRow:
    id: str
    build_id: str
    job_id: str
    step_id: str
    step_key: str | None
    path: str
    size: int
    sha256: str
    content_type: str
    created_at: datetime
