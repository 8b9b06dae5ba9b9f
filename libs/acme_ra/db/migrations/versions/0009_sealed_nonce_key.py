"""sealed nonce key: drop the nonce HMAC key stored in the clear

The frontend now keeps the shared nonce HMAC key sealed (acme_ra.sealing) in the row
"nonce-hmac-v2", created by the first frontend to start. The old row held the key in the clear;
it is deleted so that no readable copy stays. Nonces issued under it are refused once (badNonce),
and clients retry with a fresh one (RFC 8555 §6.5).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(sa.text("DELETE FROM server_keys WHERE name = 'nonce-hmac-v1'"))


def downgrade() -> None:
    # The sealed key cannot be unsealed here (no ACME_RA_SECRET_KEY): an older frontend creates a
    # new clear key of its own on start-up, and outstanding nonces are refused once.
    op.execute(sa.text("DELETE FROM server_keys WHERE name = 'nonce-hmac-v2'"))
