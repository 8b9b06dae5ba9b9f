"""authorizations: an index for the pending authorizations per account cap

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_authz_pending_account', 'authorizations', ['account_id', 'status', 'expires'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_authz_pending_account', table_name='authorizations')
