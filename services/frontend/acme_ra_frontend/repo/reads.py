"""How a route reads its resource, so the read can ride with the request's authentication."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from acme_ra.db.fast import Statement


@dataclass(frozen=True, slots=True, eq=False)
class Read:
    """A route's resource read: one statement, keyed by the path parameter of the same name,
    whose first column is the resource's id. The rows come unordered: each resource's
    ``*_from_rows`` orders them. On PostgreSQL ``repo.authentication`` may run the read inside the
    statement that authenticates the request (one round trip for both); the rows are then handed
    over as ``AcmeCall.prefetched``."""

    statement: Statement
    param: str

    async def rows(self, conn: AsyncConnection, key: str) -> list[Any]:
        return list((await self.statement.run(conn, {self.param: key})).all())
