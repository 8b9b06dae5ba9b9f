"""The upstream http-01 key authorizations the signer stores and the responder serves
(upstream_http01.py)."""

from __future__ import annotations

from typing import cast

from sqlalchemy import Table, bindparam, select

from acme_ra.db.engine import Database
from acme_ra.db.models import UpstreamKeyAuthorization, utcnow

_table = cast(Table, UpstreamKeyAuthorization.__table__)
_LOOKUP = (
    select(_table.c.key_authorization)
    .where(_table.c.token == bindparam("token"), _table.c.expires_at > bindparam("now"))
    .limit(1)
)


async def key_authorization(db: Database, token: str) -> str | None:
    """The key authorization of ``token``, unless there is none or it expired."""
    async with db.autocommit() as conn:
        found: str | None = (await conn.execute(_LOOKUP, {"token": token, "now": utcnow()})).scalar()
        return found
