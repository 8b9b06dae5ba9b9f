"""Upstream http-01: the signer stores the key authorizations the frontends serve.

For each pending upstream authorization the signer takes its http-01 challenge and writes a
row of ``upstream_key_authorizations`` (token, key authorization, the acme-ra order, the
upstream, an expiry) *before* POSTing the challenge. Every frontend process with
``ACME_RA_UPSTREAM_HTTP01_LISTEN`` answers ``GET /.well-known/acme-challenge/<token>`` from
those rows (``acme_ra_frontend.upstream_http01``), so whichever replica the upstream CA
reaches answers; the hosts redirect their ``/.well-known/acme-challenge/`` there (RFC 8555
§8.3 lets the CA follow the redirect).

The rows are themselves the journal of what is published: written in one transaction before
the POST, under the order's id, and deleted by that id once the upstream has decided, after a
failure, and by the next attempt on the order after a restart. A row past its expiry is never
served, and expired rows of any order are deleted whenever rows are written.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from josepy import JWK
from sqlalchemy import Table, delete, insert

from acme_ra.db.engine import Database
from acme_ra.db.models import UPSTREAM_TOKEN_PATTERN, UpstreamKeyAuthorization, utcnow
from acme_ra_signer.upstream.acme_config import Upstream
from acme_ra_signer.upstream.base import UpstreamRejected

log = logging.getLogger("acme_ra_signer.upstream.http01")

# How long past ACME_RA_UPSTREAM_VALIDATION_TIMEOUT_SECONDS a key authorization stays servable
# (seconds): the upstream may fetch it a little after the signer stopped waiting for it.
EXPIRY_GRACE_SECONDS = 60.0

_TOKEN = re.compile(UPSTREAM_TOKEN_PATTERN)
_table = cast(Table, UpstreamKeyAuthorization.__table__)


@dataclass(frozen=True)
class KeyAuthorization:
    """What one upstream authorization needs served."""

    token: str
    identifier: str  # the name or IP address the upstream validates with it
    key_authorization: str


def key_authorization(token: str, account_key: JWK) -> str:
    """``token "." base64url(SHA-256 thumbprint of the account key)`` (RFC 8555 §8.1)."""
    thumbprint = base64.urlsafe_b64encode(account_key.public_key().thumbprint()).rstrip(b"=").decode()
    return f"{token}.{thumbprint}"


def check_token(token: str, identifier: str, upstream: Upstream) -> None:
    """A token the responder would refuse to look up fails the order, saying why."""
    if not _TOKEN.fullmatch(token):
        raise UpstreamRejected(
            {
                "type": "serverInternal",
                "detail": f"upstream \"{upstream.name}\": sent an http-01 token for {identifier} that is not "
                "base64url of 22 to 255 characters; acme-ra cannot serve it",
            }
        )


class KeyAuthorizations:
    """The ``upstream_key_authorizations`` rows of one upstream's orders."""

    def __init__(self, db: Database, upstream: Upstream) -> None:
        self.db = db
        self.upstream = upstream

    def expiry(self, authz_expires: dt.datetime | None) -> dt.datetime:
        """Until when the responder serves them: the validation timeout and a grace, never
        past the upstream authorization's own expiry."""
        limit = utcnow() + dt.timedelta(seconds=self.upstream.validation_timeout_seconds + EXPIRY_GRACE_SECONDS)
        return min(limit, authz_expires) if authz_expires is not None else limit

    async def publish(self, order_id: str, items: Sequence[KeyAuthorization], expires_at: dt.datetime) -> None:
        """Replace the order's rows with ``items`` (one transaction; an order resumed after a
        restart publishes the same tokens again), sweeping expired rows of any order."""
        now = utcnow()
        async with self.db.transaction() as session:
            await session.execute(delete(_table).where(_table.c.expires_at < now))
            await session.execute(delete(_table).where(_table.c.order_id == order_id))
            await session.execute(
                insert(_table),
                [
                    {
                        "token": item.token,
                        "order_id": order_id,
                        "upstream": self.upstream.name,
                        "identifier": item.identifier,
                        "key_authorization": item.key_authorization,
                        "expires_at": expires_at,
                        "created_at": now,
                    }
                    for item in items
                ],
            )
        log.info(
            "http-01 key authorizations published",
            extra={"upstream": self.upstream.name, "order_id": order_id, "identifiers": [i.identifier for i in items]},
        )

    async def remove(self, order_id: str) -> None:
        """Delete the order's rows (none: nothing happens)."""
        async with self.db.autocommit() as conn:
            result = await conn.execute(delete(_table).where(_table.c.order_id == order_id))
        if result.rowcount:
            log.info(
                "http-01 key authorizations removed",
                extra={"upstream": self.upstream.name, "order_id": order_id, "rows": result.rowcount},
            )
