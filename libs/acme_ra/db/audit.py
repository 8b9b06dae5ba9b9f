"""The admin audit log: every change made through the admin plane, with who made it, when, from
where, what it was and what it changed (``audit_log``; shown by the console, ``GET /api/audit``
and ``acme-ra audit list``).

Record a change with :func:`record` in the transaction that makes it, so that the change and its
entry commit together (or neither does)::

    async with db.transaction() as session:
        ...  # the change
        await audit.record(session, actor, "certificate.renew_early", certificate_id, {"names": names})

``actor`` says who: :meth:`Actor.token` for an admin token (API, console), :meth:`Actor.local`
for ``acme-ra`` working on the database (``cli:<OS user>``). Entries are never purged
(acme_ra.db.retention keeps them) and never updated.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import getpass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from acme_ra.db.models import AuditEntry, utcnow

# The actions written today; a new one is a new name (never reuse one for another meaning).
ACTIONS = (
    "account.deactivate",
    "admin_token.create",
    "admin_token.revoke",
    "certificate.renew_early",
    "certificate.revoke",
    "eab_key.create",
    "eab_key.revoke",
    "secrets.reseal",
)
# The address recorded for ``acme-ra`` on the database (no network in between).
LOCAL_CLIENT = "local"
# Column widths (models.AuditEntry): longer values are cut, never refused.
ACTOR_CHARS = 200
CLIENT_CHARS = 64
SUBJECT_CHARS = 200


@dataclasses.dataclass(frozen=True)
class Actor:
    """Who makes a change: an admin token (id and label) from a client address, or the local CLI."""

    actor: str
    client: str
    token_id: str | None = None

    @classmethod
    def token(cls, token_id: str, label: str, client: str) -> Actor:
        return cls(actor=label or f"token {token_id}", client=client, token_id=token_id)

    @classmethod
    def local(cls) -> Actor:
        """``acme-ra`` run on the database: ``cli:<the OS user running it>``."""
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # no passwd entry and no LOGNAME/USER (a container's random uid)
            user = "unknown"
        return cls(actor=f"cli:{user}", client=LOCAL_CLIENT)


@dataclasses.dataclass(frozen=True)
class AuditFilter:
    """What a listing asks for; every field optional."""

    action: str | None = None  # exact, or a prefix ending with "." ("certificate.")
    token_id: str | None = None
    actor: str | None = None  # exact
    subject: str | None = None  # exact
    since: dt.datetime | None = None
    until: dt.datetime | None = None


async def record(session: AsyncSession, actor: Actor, action: str, subject: str,
                 detail: dict[str, Any] | None = None, at: dt.datetime | None = None) -> AuditEntry:
    """Add one entry to the session's transaction (flushed, not committed)."""
    entry = AuditEntry(at=at or utcnow(), token_id=actor.token_id, actor=actor.actor[:ACTOR_CHARS],
                       client=actor.client[:CLIENT_CHARS], action=action, subject=subject[:SUBJECT_CHARS],
                       detail=detail or None)
    session.add(entry)
    await session.flush()
    return entry


def _where(query: Any, wanted: AuditFilter) -> Any:
    if wanted.action:
        query = query.where(AuditEntry.action.startswith(wanted.action, autoescape=True)
                            if wanted.action.endswith(".") else AuditEntry.action == wanted.action)
    if wanted.token_id:
        query = query.where(AuditEntry.token_id == wanted.token_id)
    if wanted.actor:
        query = query.where(AuditEntry.actor == wanted.actor)
    if wanted.subject:
        query = query.where(AuditEntry.subject == wanted.subject)
    if wanted.since:
        query = query.where(AuditEntry.at >= wanted.since)
    if wanted.until:
        query = query.where(AuditEntry.at < wanted.until)
    return query


async def list_entries(session: AsyncSession, wanted: AuditFilter | None = None, limit: int = 100,
                       offset: int = 0) -> list[AuditEntry]:
    """Newest first (served by ix_audit_log_at, or ix_audit_log_action_at for one action)."""
    query = _where(select(AuditEntry), wanted or AuditFilter())
    query = query.order_by(AuditEntry.at.desc(), AuditEntry.id.desc()).limit(limit).offset(offset)
    return list((await session.execute(query)).scalars())


async def count_entries(session: AsyncSession, wanted: AuditFilter | None = None) -> int:
    query = _where(select(func.count()).select_from(AuditEntry), wanted or AuditFilter())
    return int(await session.scalar(query) or 0)
