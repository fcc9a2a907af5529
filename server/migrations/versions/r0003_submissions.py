"""Page URLs per submission: a key's `page_url` is its own, never part of the scan other keys share.

Revision ID: 0003_submissions
Revises: 0002_uploads
Create Date: 2026-12-02
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0003_submissions"
down_revision = "0002_uploads"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "submissions",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("scan_id", sa.String(32), sa.ForeignKey("scans.id", ondelete="CASCADE"), nullable=False),
        sa.Column("api_key_id", sa.Integer(), sa.ForeignKey("api_keys.id", ondelete="CASCADE")),
        sa.Column("page_url", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_submissions_scan_key", "submissions", ["scan_id", "api_key_id", "created_at"])
    # The page URL a scan held was its creator's: it becomes that key's submission, and leaves the shared record.
    connection = op.get_bind()
    scans = sa.table("scans", sa.column("id"), sa.column("api_key_id"), sa.column("page_url"), sa.column("created_at"))
    submissions = sa.table(
        "submissions",
        sa.column("id"),
        sa.column("scan_id"),
        sa.column("api_key_id"),
        sa.column("page_url"),
        sa.column("created_at"),
    )
    rows = connection.execute(
        sa.select(scans.c.id, scans.c.api_key_id, scans.c.page_url, scans.c.created_at).where(
            scans.c.page_url.is_not(None)
        )
    ).all()
    if rows:
        connection.execute(
            submissions.insert(),
            [
                {
                    "id": secrets.token_urlsafe(16),
                    "scan_id": r.id,
                    "api_key_id": r.api_key_id,
                    "page_url": r.page_url,
                    "created_at": r.created_at,
                }
                for r in rows
            ],
        )
        connection.execute(scans.update().values(page_url=None))


def downgrade() -> None:
    op.drop_index("ix_submissions_scan_key", table_name="submissions")
    op.drop_table("submissions")
