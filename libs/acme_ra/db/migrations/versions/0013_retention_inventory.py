"""retention and inventory: expiry indexes; certificates' names hash and issuer

The purge (acme_ra.db.retention) finds orders that never got a certificate by their expiry,
and issued ones by their certificate's; the inventory lists certificates by expiry. Without
these indexes each purge run and each inventory page would read the whole table.

Certificates get ``names_sha256`` (a renewal has the same: the inventory tells a replaced
certificate from one about to lapse) and ``issuer``; existing rows are filled from their PEM,
1,000 at a time (about a minute per million certificates).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


BACKFILL_BATCH = 1000


def _backfill() -> None:
    from cryptography import x509

    from acme_ra.db.lifecycle import issuer_name, names_sha256

    bind = op.get_bind()
    certificates = sa.table("certificates", sa.column("id", sa.String), sa.column("chain_pem", sa.Text),
                            sa.column("names_sha256", sa.String), sa.column("issuer", sa.String))
    while True:
        rows = bind.execute(sa.select(certificates.c.id, certificates.c.chain_pem)
                            .where(certificates.c.names_sha256.is_(None)).limit(BACKFILL_BATCH)).all()
        if not rows:
            return
        values = []
        for certificate_id, chain_pem in rows:
            try:
                leaf = x509.load_pem_x509_certificate(chain_pem.encode())
                values.append({"p_id": certificate_id, "p_names": names_sha256(leaf), "p_issuer": issuer_name(leaf)})
            except ValueError:  # not a certificate: marked, so the loop moves on
                values.append({"p_id": certificate_id, "p_names": "", "p_issuer": None})
        bind.execute(certificates.update().where(certificates.c.id == sa.bindparam("p_id"))
                     .values(names_sha256=sa.bindparam("p_names"), issuer=sa.bindparam("p_issuer")), values)


def upgrade() -> None:
    with op.batch_alter_table("certificates") as batch:
        batch.add_column(sa.Column("names_sha256", sa.String(64), nullable=True))
        batch.add_column(sa.Column("issuer", sa.String(500), nullable=True))
    _backfill()
    op.create_index("ix_certificates_names_not_after", "certificates", ["names_sha256", "not_after"])
    op.create_index("ix_certificates_created_at", "certificates", ["created_at"])
    unissued = sa.text("certificate_id IS NULL")
    op.create_index("ix_orders_unissued_expires", "orders", ["expires"],
                    postgresql_where=unissued, sqlite_where=unissued)
    op.create_index("ix_certificates_not_after", "certificates", ["not_after"])
    revoked = sa.text("revoked_at IS NOT NULL")
    op.create_index("ix_certificates_revoked_not_after", "certificates", ["not_after"],
                    postgresql_where=revoked, sqlite_where=revoked)


def downgrade() -> None:
    op.drop_index("ix_certificates_created_at", table_name="certificates")
    op.drop_index("ix_certificates_names_not_after", table_name="certificates")
    with op.batch_alter_table("certificates") as batch:
        batch.drop_column("issuer")
        batch.drop_column("names_sha256")
    op.drop_index("ix_certificates_revoked_not_after", table_name="certificates")
    op.drop_index("ix_certificates_not_after", table_name="certificates")
    op.drop_index("ix_orders_unissued_expires", table_name="orders")
