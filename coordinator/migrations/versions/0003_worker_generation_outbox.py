"""What a restarted coordd resumes a job from: the worker generation, each member's replica
slot and the next free slot on the job row; and the outbox of a decision's effects, written
with the decision and marked done once performed (docs/generations.md).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("worker_generation", sa.Integer, nullable=False,
                                   server_default="0"))
        batch.add_column(sa.Column("slots_json", sa.Text, nullable=False, server_default="{}"))
        batch.add_column(sa.Column("next_slot", sa.Integer, nullable=False, server_default="0"))
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String, nullable=False),
        sa.Column("kind", sa.String, nullable=False),
        sa.Column("data_json", sa.Text, nullable=False),
        sa.Column("done", sa.Boolean, nullable=False),
    )
    op.create_index("ix_outbox_job_id", "outbox", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_outbox_job_id", "outbox")
    op.drop_table("outbox")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("next_slot")
        batch.drop_column("slots_json")
        batch.drop_column("worker_generation")
