"""admin plane: the audit log; admin tokens with a scope and an expiry

Every admin change is recorded in ``audit_log`` (acme_ra.db.audit). Admin tokens get ``scope``
(existing tokens: "operator", as before) and ``expires_at`` (existing tokens: none, as before).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

import acme_ra.db.models

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_log',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('at', acme_ra.db.models.UTCDateTime(), nullable=False),
    sa.Column('token_id', sa.String(length=32), nullable=True),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('client', sa.String(length=64), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('subject', sa.String(length=200), nullable=False),
    sa.Column('detail', sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_audit_log_at', 'audit_log', ['at', 'id'], unique=False)
    op.create_index('ix_audit_log_action_at', 'audit_log', ['action', 'at'], unique=False)
    op.create_index(op.f('ix_audit_log_token_id'), 'audit_log', ['token_id'], unique=False)
    with op.batch_alter_table('admin_tokens') as batch:
        batch.add_column(sa.Column('scope', sa.String(length=16), server_default='operator', nullable=False))
        batch.add_column(sa.Column('expires_at', acme_ra.db.models.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('admin_tokens') as batch:
        batch.drop_column('expires_at')
        batch.drop_column('scope')
    op.drop_index(op.f('ix_audit_log_token_id'), table_name='audit_log')
    op.drop_index('ix_audit_log_action_at', table_name='audit_log')
    op.drop_index('ix_audit_log_at', table_name='audit_log')
    op.drop_table('audit_log')
