"""retention indexes: orders without a certificate, certificates, revoked certificates by expiry

The purge (acme_ra.db.retention) finds orders that never got a certificate by their expiry,
and issued ones by their certificate's; the inventory lists certificates by expiry. Without
these indexes each purge run and each inventory page would read the whole table.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    unissued = sa.text("certificate_id IS NULL")
    op.create_index("ix_orders_unissued_expires", "orders", ["expires"],
                    postgresql_where=unissued, sqlite_where=unissued)
    op.create_index("ix_certificates_not_after", "certificates", ["not_after"])
    revoked = sa.text("revoked_at IS NOT NULL")
    op.create_index("ix_certificates_revoked_not_after", "certificates", ["not_after"],
                    postgresql_where=revoked, sqlite_where=revoked)


def downgrade() -> None:
    op.drop_index("ix_certificates_revoked_not_after", table_name="certificates")
    op.drop_index("ix_certificates_not_after", table_name="certificates")
    op.drop_index("ix_orders_unissued_expires", table_name="orders")
