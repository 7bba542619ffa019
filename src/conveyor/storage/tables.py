"""Table definitions (SQLAlchemy Core). Migrations in `migrations/` must match these."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores no zone of its own)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)


metadata = MetaData()

tokens = Table(
    "tokens",
    metadata,
    Column("id", String(36), primary_key=True),
    # registration | api | agent | job
    Column("kind", String(16), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("agent_id", String(36), ForeignKey("agents.id", ondelete="CASCADE"), nullable=True),
    Column("job_id", String(36), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=True),
    Column("description", String(200), nullable=False, default=""),
    Column("created_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime, nullable=True),
)

agents = Table(
    "agents",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("hostname", String(255), nullable=False, default=""),
    Column("os", String(32), nullable=False, default=""),
    Column("arch", String(32), nullable=False, default=""),
    Column("version", String(32), nullable=False, default=""),
    Column("pid", Integer, nullable=False, default=0),
    Column("tags", JSON, nullable=False),
    Column("priority", Integer, nullable=False, default=0),
    # registered | connected | disconnected | lost
    Column("state", String(16), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("connected_at", UTCDateTime, nullable=True),
    Column("disconnected_at", UTCDateTime, nullable=True),
    Column("last_heartbeat_at", UTCDateTime, nullable=True),
    Column("last_seen_at", UTCDateTime, nullable=True),
    Column("last_success_at", UTCDateTime, nullable=True),
    Column("current_job_id", String(36), nullable=True),
    # The agent process this worker belongs to (one per `conveyor agent start`).
    Column("process_id", String(36), nullable=True),
    Column("paused", Integer, nullable=False, server_default="0"),
)

pipelines = Table(
    "pipelines",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("slug", String(100), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    Column("repository", String(1000), nullable=False, default=""),
    Column("default_branch", String(255), nullable=False, default="main"),
    Column("next_build_number", Integer, nullable=False, default=1),
    Column("created_at", UTCDateTime, nullable=False),
    # The pipeline YAML a build gets when none is given; None: upload `steps_file` from the
    # checkout.
    Column("steps", Text, nullable=True),
    Column("steps_file", String(500), nullable=False, server_default=".buildkite/pipeline.yml"),
)

builds = Table(
    "builds",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("pipeline_id", String(36), ForeignKey("pipelines.id"), nullable=False),
    Column("number", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("branch", String(255), nullable=False, default=""),
    Column("commit", String(255), nullable=False, default="HEAD"),
    Column("message", Text, nullable=False, default=""),
    Column("source", String(32), nullable=False, default="api"),
    Column("env", JSON, nullable=False),
    Column("pipeline_text", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime, nullable=True),
    Column("finished_at", UTCDateTime, nullable=True),
    # Values set by unblocking block/input steps (and by jobs); None means {}.
    Column("meta_data", JSON, nullable=True),
    # The trigger step (of another build) that created this build.
    Column("parent_step_id", String(36), nullable=True),
    UniqueConstraint("pipeline_id", "number", name="uq_builds_pipeline_number"),
)

steps = Table(
    "steps",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("build_id", String(36), ForeignKey("builds.id", ondelete="CASCADE"), nullable=False),
    Column("position", Integer, nullable=False),
    Column("key", String(255), nullable=True),
    Column("kind", String(16), nullable=False),
    Column("label", String(500), nullable=True),
    # The step's parsed definition (command, env, agents, ...), as plain JSON.
    Column("config", JSON, nullable=False),
    # ids of the steps that must finish first; a wait step becomes dependencies of what follows.
    Column("depends_on", JSON, nullable=False),
    Column("allow_dependency_failure", Integer, nullable=False, default=0),
    # pending | running | blocked | passed | failed | skipped | not_run (see server.scheduler)
    Column("state", String(16), nullable=False),
    UniqueConstraint("build_id", "position", name="uq_steps_build_position"),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("build_id", String(36), ForeignKey("builds.id", ondelete="CASCADE"), nullable=False),
    Column("step_id", String(36), ForeignKey("steps.id", ondelete="CASCADE"), nullable=False),
    Column("state", String(16), nullable=False),
    Column("label", String(500), nullable=False),
    Column("command", Text, nullable=False),
    Column("env", JSON, nullable=False),
    Column("agent_query", JSON, nullable=False),
    Column("priority", Integer, nullable=False, default=0),
    Column("attempt", Integer, nullable=False, default=1),
    Column("agent_id", String(36), nullable=True),
    Column("exit_status", Integer, nullable=True),
    Column("signal", String(16), nullable=True),
    Column("signal_reason", String(32), nullable=True),
    Column("chunks_failed_count", Integer, nullable=False, default=0),
    Column("log_size", BigInteger, nullable=False, default=0),
    Column("created_at", UTCDateTime, nullable=False),
    Column("runnable_at", UTCDateTime, nullable=True),
    Column("assigned_at", UTCDateTime, nullable=True),
    Column("accepted_at", UTCDateTime, nullable=True),
    Column("started_at", UTCDateTime, nullable=True),
    Column("finished_at", UTCDateTime, nullable=True),
    # At most `concurrency_limit` jobs of one group run at once, across builds.
    Column("concurrency_group", String(255), nullable=True),
    Column("concurrency_limit", Integer, nullable=True),
    # The step's timeout_in_minutes: a job running longer is canceled (and marked timed out).
    Column("timeout_minutes", Integer, nullable=True),
    Column("timed_out", Integer, nullable=False, server_default="0"),
    # true, or a list of exit statuses that do not fail the step; None: none.
    Column("soft_fail", JSON, nullable=True),
    # Failed, but `soft_fail` covers the exit status: the step passes.
    Column("soft_failed", Integer, nullable=False, server_default="0"),
)

Index("ix_jobs_dispatch", jobs.c.state, jobs.c.priority, jobs.c.runnable_at)
Index("ix_jobs_build", jobs.c.build_id)
Index("ix_steps_build", steps.c.build_id)
Index("ix_builds_created", builds.c.created_at)
Index("ix_jobs_concurrency", jobs.c.concurrency_group, jobs.c.state)
Index("ix_builds_parent_step", builds.c.parent_step_id)
Index("ix_tokens_job", tokens.c.job_id)
Index("ix_tokens_agent", tokens.c.agent_id)
Index("ix_jobs_agent", jobs.c.agent_id)
Index("ix_jobs_step", jobs.c.step_id)

log_chunks = Table(
    "log_chunks",
    metadata,
    Column("job_id", String(36), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    # Byte offset of the chunk in the job's log: the idempotency key of an upload.
    Column("offset", BigInteger, primary_key=True),
    Column("size", Integer, nullable=False),
    Column("sequence", Integer, nullable=False),
    Column("data", LargeBinary, nullable=False),
)

build_annotations = Table(
    "annotations",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("build_id", String(36), ForeignKey("builds.id", ondelete="CASCADE"), nullable=False),
    # One annotation per context in a build; `--append` adds to its body.
    Column("context", String(255), nullable=False),
    Column("style", String(16), nullable=False),
    Column("body", Text, nullable=False),
    Column("job_id", String(36), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    UniqueConstraint("build_id", "context", name="uq_annotations_build_context"),
)

artifacts = Table(
    "artifacts",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("build_id", String(36), ForeignKey("builds.id", ondelete="CASCADE"), nullable=False),
    Column("job_id", String(36), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("step_id", String(36), nullable=False),
    # Relative to the directory the upload ran in, with forward slashes.
    Column("path", String(1000), nullable=False),
    Column("size", BigInteger, nullable=False),
    # The content's address in the artifact store.
    Column("sha256", String(64), nullable=False),
    Column("content_type", String(255), nullable=False, default="application/octet-stream"),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("job_id", "path", name="uq_artifacts_job_path"),
)

Index("ix_artifacts_build", artifacts.c.build_id)
