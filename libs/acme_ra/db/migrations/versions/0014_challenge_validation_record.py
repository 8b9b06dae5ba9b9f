"""challenges.validation_record: each network perspective's result and the quorum (MPIC)

With multi-perspective corroboration on (ACME_RA_MPIC_REMOTE_PERSPECTIVES), the primary
validator stores, before a challenge's outcome, what every perspective saw: name, region,
addresses, outcome, problem, and the quorum string ("2/3"). NULL for challenges validated
without it. Adding a nullable column rewrites no row.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("challenges") as batch:
        batch.add_column(sa.Column("validation_record", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("challenges") as batch:
        batch.drop_column("validation_record")
