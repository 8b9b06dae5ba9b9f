"""Who may use the admin plane and what they did: admin tokens (with a scope and an expiry) and the
audit log (mixed into :class:`acme_ra_admin.operations.AdminOperations`).

``AdminOperations.audit(actor, action, subject, detail)`` records a change made outside these
operations' own transactions; inside one, call :func:`acme_ra.db.audit.record` with its session.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from acme_ra.db import audit, models
from acme_ra.db.audit import Actor, AuditFilter
from acme_ra.db.engine import Database
from acme_ra.db.models import AdminTokenScope, utcnow
from acme_ra_admin import repository, schemas, tokens
from acme_ra_admin.errors import Conflict, NotFound, OperationError

log = logging.getLogger("acme_ra_admin.access")

SCOPES = tuple(scope.value for scope in AdminTokenScope)


class AccessOperations:
    """Admin tokens and the audit log."""

    db: Database

    # Audit log ------------------------------------------------------------------------------

    async def audit(self, actor: Actor | None, action: str, subject: str,
                    detail: dict[str, Any] | None = None) -> schemas.AuditEntry:
        """Record one change in its own transaction (``actor`` None: ``acme-ra`` on the database)."""
        async with self.db.transaction() as session:
            entry = await audit.record(session, actor or Actor.local(), action, subject, detail)
        return audit_entry(entry)

    async def list_audit(self, wanted: AuditFilter | None = None, limit: int = repository.DEFAULT_LIMIT,
                         offset: int = 0) -> list[schemas.AuditEntry]:
        """Newest first."""
        async with self.db.transaction() as session:
            rows = await audit.list_entries(session, wanted, limit, offset)
        return [audit_entry(row) for row in rows]

    async def count_audit(self, wanted: AuditFilter | None = None) -> int:
        async with self.db.transaction() as session:
            return await audit.count_entries(session, wanted)

    # Admin tokens ---------------------------------------------------------------------------

    async def create_admin_token(self, label: str = "", scope: str = AdminTokenScope.operator.value,
                                 expires_in: dt.timedelta | None = None,
                                 actor: Actor | None = None) -> schemas.NewAdminToken:
        if scope not in SCOPES:
            raise OperationError(f"scope {scope!r} is not one of {', '.join(SCOPES)}")
        if expires_in is not None and expires_in <= dt.timedelta(0):
            raise OperationError("a token's lifetime must be positive")
        expires_at = utcnow() + expires_in if expires_in is not None else None
        async with self.db.transaction() as session:
            row, token = await tokens.create_token(session, label, scope, expires_at)
            await audit.record(session, actor or Actor.local(), "admin_token.create", row.id,
                               {"label": label, "scope": scope,
                                "expires_at": expires_at.isoformat() if expires_at else None})
        log.info("admin token created", extra={"token_id": row.id, "label": label, "scope": scope})
        return schemas.NewAdminToken(**admin_token(row).model_dump(), token=token)

    async def list_admin_tokens(self) -> list[schemas.AdminToken]:
        async with self.db.transaction() as session:
            rows = await tokens.list_tokens(session)
        return [admin_token(row) for row in rows]

    async def revoke_admin_token(self, token_id: str, actor: Actor | None = None) -> None:
        async with self.db.transaction() as session:
            row = await session.get(models.AdminToken, token_id)
            if row is None:
                raise NotFound(f"no admin token {token_id}")
            if not await tokens.revoke_token(session, token_id):
                raise Conflict(f"admin token {token_id} is already revoked")
            await audit.record(session, actor or Actor.local(), "admin_token.revoke", token_id, {"label": row.label})
        log.info("admin token revoked", extra={"token_id": token_id})


def admin_token(row: models.AdminToken) -> schemas.AdminToken:
    return schemas.AdminToken(id=row.id, label=row.label, created_at=row.created_at, last_used_at=row.last_used_at,
                              revoked_at=row.revoked_at, scope=row.scope, expires_at=row.expires_at)


def audit_entry(row: models.AuditEntry) -> schemas.AuditEntry:
    return schemas.AuditEntry(id=row.id, at=row.at, actor=row.actor, token_id=row.token_id, client=row.client,
                              action=row.action, subject=row.subject, detail=row.detail)
