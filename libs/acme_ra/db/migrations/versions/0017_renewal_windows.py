"""renewal windows: the upstream's ARI window relayed, or an operator's renew-early

One row per certificate whose renewal window is not the one acme-ra computes: the window its
upstream CA suggests (RFC 9773, read by the signer at issuance and again after each
Retry-After), or a window moved into the past by ``acme-ra certs renew-early``. Certificates
without a row keep the computed window; no existing row is touched.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

import acme_ra.db.models

revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "renewal_windows",
        sa.Column("certificate_id", sa.String(32), sa.ForeignKey("certificates.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("upstream", sa.String(64), nullable=True),
        sa.Column("start", acme_ra.db.models.UTCDateTime(), nullable=True),
        sa.Column("end", acme_ra.db.models.UTCDateTime(), nullable=True),
        sa.Column("explanation_url", sa.String(1024), nullable=True),
        sa.Column("next_fetch_at", acme_ra.db.models.UTCDateTime(), nullable=True),
        sa.Column("fetch_failures", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("updated_at", acme_ra.db.models.UTCDateTime(), nullable=False),
    )
    op.create_index("ix_renewal_windows_next_fetch_at", "renewal_windows", ["next_fetch_at"])


def downgrade() -> None:
    op.drop_index("ix_renewal_windows_next_fetch_at", table_name="renewal_windows")
    op.drop_table("renewal_windows")
