"""Rate limits that hold across frontend replicas: fixed-window counters in the database.

newOrder and finalize run without a transaction (one round trip each for BEGIN and COMMIT saved),
so a counter's increment stays whatever happens next; they spend their counters after every check
that can refuse the request, just before their one write (newOrder's insert, finalize's claim; on
PostgreSQL in that write's own statement, which then writes nothing when a limit is exceeded), so
a request refused for another reason does not count. Exceptions, rare and harmless: a request
refused by the limit itself leaves its increment (the counter is above the limit, which refuses
the same requests until the window ends anyway); a finalize that loses a race with another
finalize of the same order, or whose CSR key is blocked (both found by the claim), or whose order
names another registered domain over its limit, has spent its counters. Refusals are
``rateLimited`` (429) with ``Retry-After``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from acme_ra.client_networks import client_ip
from acme_ra.db.models import utcnow
from acme_ra.protocol.problems import Problem
from acme_ra_frontend.repo import ratelimits as repo_ratelimits

HOUR = dt.timedelta(hours=1)
WEEK = dt.timedelta(days=7)


def client_address(request: Request, trusted_proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> str:
    """The peer's address; when the peer is a trusted proxy, the rightmost X-Forwarded-For hop
    that is not itself a trusted proxy. Every X-Forwarded-For header counts, in order: HAProxy's
    ``option forwardfor`` adds its own after any the client sent, and hops to the left of the
    last untrusted one are the client's own words."""
    peer = request.client.host if request.client else "unknown"
    if not _is_trusted(peer, trusted_proxies):
        return peer
    hops = [hop.strip() for value in request.headers.getlist("x-forwarded-for") for hop in value.split(",")]
    hops = [hop for hop in hops if hop]
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted_proxies):
            return hop
    return hops[0] if hops else peer


def _is_trusted(address: str, trusted_proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    ip = client_ip(address)
    return ip is not None and any(ip in network for network in trusted_proxies)


def client_network(address: str, ipv4_prefix: int = 32, ipv6_prefix: int = 64) -> str:
    """What new accounts are counted per: the client's address, or the network of the given prefix
    length around it (ACME_RA_LIMIT_ACCOUNTS_IPV6_PREFIX / _IPV4_PREFIX): one IPv6 client usually
    holds a whole /64, so counting per address would give it unlimited accounts. An IPv4 address
    seen as IPv4-mapped IPv6 (a dual-stack socket) counts as IPv4."""
    ip = client_ip(address)
    if ip is None:
        return address
    prefix = ipv4_prefix if ip.version == 4 else ipv6_prefix
    if prefix == ip.max_prefixlen:
        return str(ip)
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def rate_limited(what: str, retry_after: dt.timedelta) -> Problem:
    seconds = max(1, math.ceil(retry_after.total_seconds()))
    return Problem("rateLimited", f"too many {what}; retry after {seconds} s", headers={"Retry-After": str(seconds)})


@dataclass(frozen=True, slots=True)
class Spend:
    """One event to count against ``limit`` per ``window`` (a limit of 0 or less: no limit)."""

    name: str
    subject: str
    limit: int
    window: dt.timedelta
    what: str

    @property
    def key(self) -> str:
        return f"{self.name}:{self.subject}"[:300]

    def window_start(self, now: dt.datetime) -> dt.datetime:
        epoch = int(now.timestamp())
        return dt.datetime.fromtimestamp(epoch - epoch % int(self.window.total_seconds()), dt.UTC)

    def check(self, count: int, now: dt.datetime) -> None:
        """Refuse when ``count`` (the counter after this event, at ``now``) exceeds the limit."""
        if count > self.limit:
            raise rate_limited(self.what, self.window_start(now) + self.window - now)


def active(limits: Iterable[Spend]) -> list[Spend]:
    """The limits that are set (a limit of 0 or less counts nothing)."""
    return [limit for limit in limits if limit.limit > 0]


async def spend(conn: AsyncConnection, counted: Spend) -> None:
    """Count one event against its limit in a statement of its own; refuse when it is exceeded."""
    if counted.limit <= 0:
        return
    now = utcnow()
    counted.check(await repo_ratelimits.increment(conn, counted.key, counted.window_start(now)), now)


def check_spent(limits: Sequence[Spend], spent: Iterable[Any], now: dt.datetime) -> None:
    """Refuse with the first of ``limits`` whose count (``spent``'s rows: key, count) exceeds it."""
    counts = {row.key: row.count for row in spent}
    for limit in limits:
        limit.check(counts[limit.key], now)


async def check_pending_authorizations(conn: AsyncConnection, account_id: str, new: int, cap: int,
                                       now: dt.datetime) -> None:
    """Refuse a new order whose ``new`` authorizations would take the account past ``cap`` pending
    ones (ACME_RA_LIMIT_PENDING_AUTHZ_PER_ACCOUNT; 0: no cap), with ``Retry-After`` until the
    first of them expires. A count, not a counter: an authorization that turns valid, invalid or
    deactivated, or expires, is no longer counted, with nothing to update. Two orders racing
    each other may pass it together by their own authorizations at most (it is a cap on growth,
    not an exact quota)."""
    if cap <= 0 or new == 0:
        return
    count, first_expiry = await repo_ratelimits.pending_authzs(conn, account_id, now)
    if count + new > cap:
        retry = (first_expiry - now) if first_expiry is not None else HOUR
        seconds = max(1, math.ceil(retry.total_seconds()))
        raise Problem("rateLimited",
                      f"too many pending authorizations for this account ({count}, at most {cap}): complete or "
                      f"deactivate them, or retry after {seconds} s when the first expires",
                      headers={"Retry-After": str(seconds)})


def check_failed_validations(failures: dict[str, int], limit: int) -> None:
    """Refuse a new order for a name this account failed to validate ``limit`` times in the last
    hour (``failures``: invalid authorizations per name, from ``orders.authz_history``)."""
    if limit <= 0:
        return
    for name, count in failures.items():
        if count >= limit:
            raise rate_limited(f"failed validations for {name}", HOUR)


async def purge_old_counters(session: AsyncSession) -> None:
    await repo_ratelimits.purge_counters_before(session, utcnow() - WEEK - HOUR)
