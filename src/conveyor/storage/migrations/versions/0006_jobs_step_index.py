"""index for finding a step's jobs

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Starting, skipping and settling a step reads or updates its jobs by step: without this, each
# scans a table that grows with every job ever run.


def upgrade() -> None:
    op.create_index("ix_jobs_step", "jobs", ["step_id"])


def downgrade() -> None:
    op.drop_index("ix_jobs_step", table_name="jobs")
