"""PostgreSQL behind a failover: a database URL that lists several servers, libpq's way.

An operator writes the URL as libpq and every PostgreSQL tool take it::

    postgresql+asyncpg://acme@db1:5432,db2:5432/acme?target_session_attrs=read-write

SQLAlchemy cannot parse a host list in the URL's authority (it reads ``5432,db2:5432`` as the
port); its asyncpg dialect takes the same list as repeated ``host`` query arguments instead
(``postgresql+asyncpg://acme@/acme?host=db1:5432&host=db2:5432``, SQLAlchemy 2.0.18+) and hands
asyncpg the hosts and ports as lists. asyncpg then tries them in order and, with
``target_session_attrs=read-write``, keeps the first that accepts writes (``SHOW
transaction_read_only`` is off): the primary, whichever server that is after a failover.

:func:`sqlalchemy_url` turns the first form into the second. A URL with several hosts and no
``target_session_attrs`` gets ``read-write``: acme-ra writes on every request, so a connection to
a standby is never what an operator means. One host, the query form, SQLite: unchanged.

asyncpg gives all the hosts together one timeout (60 s): a first host that does not answer at
all (a dead machine drops the packets, a frozen one accepts and says nothing) would take all of it,
on every new connection. :class:`acme_ra.db.engine.PrimaryConnector` connects the services
instead: one host at a time, each for at most ``engine.HOST_CONNECT_TIMEOUT_SECONDS``, starting
with the host that was the primary last time.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode

# What asyncpg connects with when the URL does not say (a URL with several hosts only).
DEFAULT_TARGET_SESSION_ATTRS = "read-write"
TARGET_SESSION_ATTRS = ("any", "primary", "standby", "prefer-standby", "read-write", "read-only")
DEFAULT_PORT = 5432

# scheme://[userinfo@]authority[/database][?query]
_URL = re.compile(r"^(?P<scheme>postgres(?:ql)?(?:\+\w+)?)://(?:(?P<userinfo>[^@/?]*)@)?"
                  r"(?P<authority>[^/?]*)(?P<path>/[^?]*)?(?:\?(?P<query>.*))?$")
_HOST_PORT = re.compile(r"^(?P<host>[A-Za-z0-9.\-_]+)(?::(?P<port>\d+))?$")


def hosts(url: str) -> list[tuple[str, int]]:
    """The (host, port) pairs of a PostgreSQL URL's host list, in either form; [] for SQLite or
    a URL without host."""
    match = _URL.match(url)
    if match is None:
        return []
    listed = [item for item in match["authority"].split(",") if item]
    listed += [value for name, value in parse_qsl(match["query"] or "") if name == "host"]
    pairs = []
    for item in listed:
        parsed = _HOST_PORT.match(item)
        if parsed is None:
            raise ValueError(f"database URL: {item!r} is not host or host:port (IPv6 addresses need a name "
                             "in a URL with several hosts)")
        pairs.append((parsed["host"], int(parsed["port"] or DEFAULT_PORT)))
    return pairs


def sqlalchemy_url(url: str) -> str:
    """``url`` as SQLAlchemy's asyncpg dialect reads it: a libpq-style host list
    (``h1:p1,h2:p2``) becomes ``host=`` query arguments, each with its port, and gets
    ``target_session_attrs=read-write`` unless the URL chose otherwise. Raises ValueError on a
    host list it cannot read or an unknown ``target_session_attrs``."""
    match = _URL.match(url)
    if match is None:
        return url
    query = parse_qsl(match["query"] or "", keep_blank_values=True)
    attrs = [value for name, value in query if name == "target_session_attrs"]
    for value in attrs:
        if value not in TARGET_SESSION_ATTRS:
            raise ValueError(f"database URL: target_session_attrs={value!r} is not one of {', '.join(TARGET_SESSION_ATTRS)}")
    if "," not in match["authority"]:
        return url
    pairs = hosts(url)
    rest = [(name, value) for name, value in query if name != "host"]
    if not attrs:
        rest.append(("target_session_attrs", DEFAULT_TARGET_SESSION_ATTRS))
    arguments = [("host", f"{host}:{port}") for host, port in pairs] + rest
    userinfo = f"{match['userinfo']}@" if match["userinfo"] is not None else ""
    return f"{match['scheme']}://{userinfo}{match['path'] or '/'}?{urlencode(arguments, safe=':/')}"

