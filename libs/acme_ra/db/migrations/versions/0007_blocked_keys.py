"""blocked_keys: public keys refused after a keyCompromise revocation

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

import acme_ra.db.models

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('blocked_keys',
    sa.Column('spki_sha256', sa.String(length=64), nullable=False),
    sa.Column('certificate_id', sa.String(length=32), nullable=True),
    sa.Column('created_at', acme_ra.db.models.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('spki_sha256')
    )


def downgrade() -> None:
    op.drop_table('blocked_keys')
