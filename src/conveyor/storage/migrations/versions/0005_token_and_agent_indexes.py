"""indexes for revoking a job's tokens and finding an agent's jobs

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Every finish revokes its job's tokens and every disconnect its agent's: without these, each
# scans a table that grows with every job ever run.
_INDEXES = (
    ("ix_tokens_job", "tokens", ["job_id"]),
    ("ix_tokens_agent", "tokens", ["agent_id"]),
    ("ix_jobs_agent", "jobs", ["agent_id"]),
)


def upgrade() -> None:
    for name, table, columns in _INDEXES:
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, table, _ in reversed(_INDEXES):
        op.drop_index(name, table_name=table)
