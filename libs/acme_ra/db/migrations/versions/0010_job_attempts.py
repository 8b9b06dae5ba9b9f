"""job attempts: challenges.republished and orders.republished (the reconciler counts the jobs
it publishes again), challenges.check_attempts (the validator counts checks of redelivered jobs)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ('challenges', 'orders'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column('republished', sa.Integer(), server_default='0', nullable=False))
            if table == 'challenges':
                batch_op.add_column(sa.Column('check_attempts', sa.Integer(), server_default='0', nullable=False))


def downgrade() -> None:
    for table in ('orders', 'challenges'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            if table == 'challenges':
                batch_op.drop_column('check_attempts')
            batch_op.drop_column('republished')
