"""The schema coordd had before migrations: jobs, nodes, events, logs.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String, primary_key=True),
        sa.Column("name", sa.String, nullable=False, index=True),
        sa.Column("spec_json", sa.Text, nullable=False),
        sa.Column("state", sa.String, nullable=False, index=True),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("restarts", sa.Integer, nullable=False),
        sa.Column("node_ids", sa.Text, nullable=False),
        sa.Column("failure_json", sa.Text, nullable=False),
        sa.Column("bundle_digest", sa.String, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
    )
    op.create_table(
        "nodes",
        sa.Column("id", sa.String, primary_key=True),
        sa.Column("job_id", sa.String, nullable=True, index=True),
        sa.Column("provider", sa.String, nullable=False),
        sa.Column("host", sa.String, nullable=False),
        sa.Column("state", sa.String, nullable=False),
        sa.Column("resources_json", sa.Text, nullable=False),
        sa.Column("provider_json", sa.Text, nullable=False),
        sa.Column("last_heartbeat", sa.Float, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("incarnation", sa.String, nullable=False),
        sa.Column("applied_seq", sa.Integer, nullable=False),
    )
    op.create_table(
        "events",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String, nullable=False, index=True),
        sa.Column("time", sa.Float, nullable=False),
        sa.Column("kind", sa.String, nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("data_json", sa.Text, nullable=False),
    )
    op.create_table(
        "logs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String, nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("node_id", sa.String, nullable=False),
        sa.Column("rank", sa.Integer, nullable=False),
        sa.Column("stream", sa.Integer, nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("time", sa.Float, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
    )
    op.create_index("logs_by_job", "logs", ["job_id", "id"])


def downgrade() -> None:
    for table in ("logs", "events", "nodes", "jobs"):
        op.drop_table(table)
