"""orders list: an account's orders by creation time (keyset pagination)

The account's orders list (RFC 8555 §7.1.2.1) is read a page at a time in (created_at, id) order
from where the previous page ended; this index serves it, and every other lookup of an account's
orders by its leading column, so it replaces ix_orders_account_id.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07
"""

from alembic import op

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_orders_account_created", "orders", ["account_id", "created_at", "id"])
    op.drop_index("ix_orders_account_id", table_name="orders")


def downgrade() -> None:
    op.create_index("ix_orders_account_id", "orders", ["account_id"])
    op.drop_index("ix_orders_account_created", table_name="orders")
