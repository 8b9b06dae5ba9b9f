"""upstream dns records: the upstream dns-01 TXT records an upstream order published

The signer records the TXT records (``[fqdn, value]`` pairs) it is about to publish for an
upstream dns-01 challenge before publishing them, and clears the column once they are removed:
a signer that restarts mid-validation removes what the one before it left.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("upstream_orders") as batch:
        batch.add_column(sa.Column("dns_records", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("upstream_orders") as batch:
        batch.drop_column("dns_records")
