"""When a node entered its state: dead nodes (LOST, GONE) are removed `node_retention_s`
after it (coordinator/retention.py). Rows from before get their creation time.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("state_since", sa.Float, nullable=False, server_default="0"))
    op.execute("UPDATE nodes SET state_since = created_at")


def downgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("state_since")
