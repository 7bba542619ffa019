"""pipeline steps, build meta-data and triggers, job concurrency, soft failure and timeouts

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("pipelines", schema=None) as batch_op:
        batch_op.add_column(sa.Column("steps", sa.Text(), nullable=True))
        batch_op.add_column(
            sa.Column(
                "steps_file",
                sa.String(length=500),
                server_default=".buildkite/pipeline.yml",
                nullable=False,
            )
        )
    with op.batch_alter_table("builds", schema=None) as batch_op:
        batch_op.add_column(sa.Column("meta_data", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("parent_step_id", sa.String(length=36), nullable=True))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("concurrency_group", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("concurrency_limit", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("soft_fail", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("timeout_minutes", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("timed_out", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("soft_failed", sa.Integer(), server_default="0", nullable=False)
        )
    op.create_index("ix_jobs_concurrency", "jobs", ["concurrency_group", "state"])
    op.create_index("ix_builds_parent_step", "builds", ["parent_step_id"])


def downgrade() -> None:
    op.drop_index("ix_builds_parent_step", table_name="builds")
    op.drop_index("ix_jobs_concurrency", table_name="jobs")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("soft_failed")
        batch_op.drop_column("soft_fail")
        batch_op.drop_column("timed_out")
        batch_op.drop_column("timeout_minutes")
        batch_op.drop_column("concurrency_limit")
        batch_op.drop_column("concurrency_group")
    with op.batch_alter_table("builds", schema=None) as batch_op:
        batch_op.drop_column("parent_step_id")
        batch_op.drop_column("meta_data")
    with op.batch_alter_table("pipelines", schema=None) as batch_op:
        batch_op.drop_column("steps_file")
        batch_op.drop_column("steps")
