"""Uploaded videos: the original file name and size of a scan made from an upload (NULL for URL scans).

Revision ID: 0002_uploads
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_uploads"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("scans", sa.Column("upload_name", sa.Text()))
    op.add_column("scans", sa.Column("upload_bytes", sa.BigInteger()))


def downgrade() -> None:
    op.drop_column("scans", "upload_bytes")
    op.drop_column("scans", "upload_name")
