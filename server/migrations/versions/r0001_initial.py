"""Initial schema: API keys, scans, batches and their items.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Document = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _time(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("rate_limit", sa.String(64)),
        _time("created_at", nullable=False),
        _time("revoked_at"),
    )
    op.create_table(
        "batches",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("model", sa.String(100), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("api_key_id", sa.Integer(), sa.ForeignKey("api_keys.id", ondelete="SET NULL")),
        _time("created_at", nullable=False),
    )
    op.create_table(
        "scans",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("normalized_url", sa.Text(), nullable=False),
        sa.Column("page_url", sa.Text()),
        sa.Column("model", sa.String(100), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("active_key", sa.String(64), unique=True),
        sa.Column("task_id", sa.String(64)),
        sa.Column("stage", sa.String(16)),
        sa.Column("fraction", sa.Double()),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(255)),
        sa.Column("sha256", sa.String(64)),
        sa.Column("label", sa.String(16)),
        sa.Column("error_code", sa.String(32)),
        sa.Column("result", Document),
        sa.Column("reused_from", sa.String(32)),
        sa.Column("api_key_id", sa.Integer(), sa.ForeignKey("api_keys.id", ondelete="SET NULL")),
        _time("created_at", nullable=False),
        _time("enqueued_at"),
        _time("started_at"),
        _time("heartbeat_at"),
        _time("finished_at"),
    )
    op.create_index("ix_scans_cache", "scans", ["normalized_url", "model", "model_version", "finished_at"])
    op.create_index("ix_scans_content", "scans", ["sha256", "model", "model_version", "finished_at"])
    op.create_index("ix_scans_status", "scans", ["status"])
    op.create_table(
        "batch_items",
        sa.Column("batch_id", sa.String(32), sa.ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("position", sa.Integer(), primary_key=True),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("scan_id", sa.String(32), sa.ForeignKey("scans.id", ondelete="SET NULL")),
        sa.Column("error_code", sa.String(32)),
        sa.Column("error_message", sa.Text()),
    )


def downgrade() -> None:
    op.drop_table("batch_items")
    op.drop_index("ix_scans_status", "scans")
    op.drop_index("ix_scans_content", "scans")
    op.drop_index("ix_scans_cache", "scans")
    op.drop_table("scans")
    op.drop_table("batches")
    op.drop_table("api_keys")
