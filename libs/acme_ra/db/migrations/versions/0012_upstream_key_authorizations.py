"""upstream key authorizations: what the frontend's responder serves for upstream http-01

The signer stores the key authorization of each upstream http-01 challenge (token, the order it
belongs to, the upstream, an expiry) before POSTing the challenge; every frontend replica with
ACME_RA_UPSTREAM_HTTP01_LISTEN serves it at /.well-known/acme-challenge/<token>. The rows of an
order are deleted once the upstream has decided, or by the next attempt after a restart.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

import acme_ra.db.models

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "upstream_key_authorizations",
        sa.Column("token", sa.String(length=255), nullable=False),
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("upstream", sa.String(length=64), nullable=False),
        sa.Column("identifier", sa.String(length=255), nullable=False),
        sa.Column("key_authorization", sa.String(length=512), nullable=False),
        sa.Column("expires_at", acme_ra.db.models.UTCDateTime(), nullable=False),
        sa.Column("created_at", acme_ra.db.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("token", "order_id"),
    )
    op.create_index(
        op.f("ix_upstream_key_authorizations_order_id"), "upstream_key_authorizations", ["order_id"], unique=False
    )
    op.create_index(
        op.f("ix_upstream_key_authorizations_expires_at"), "upstream_key_authorizations", ["expires_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_upstream_key_authorizations_expires_at"), table_name="upstream_key_authorizations")
    op.drop_index(op.f("ix_upstream_key_authorizations_order_id"), table_name="upstream_key_authorizations")
    op.drop_table("upstream_key_authorizations")
