"""The console's audit log page: every admin change, newest first, filtered by action, subject or
token, a page at a time (acme_ra.db.audit)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from acme_ra.db.audit import ACTIONS, AuditFilter
from acme_ra_admin.console import LoggedIn
from acme_ra_admin.paging import Pager

router = APIRouter(include_in_schema=False)


@router.get("/audit")
async def audit_page(current: LoggedIn, action: str = "", subject: str = "", token_id: str = "", page: str = "1",
                     rows: str = "") -> Response:
    action, subject, token_id = action[:64].strip(), subject[:200].strip(), token_id[:32].strip()
    pager = Pager.of(page, rows, {"action": action, "subject": subject, "token_id": token_id})
    wanted = AuditFilter(action=action or None, subject=subject or None, token_id=token_id or None)
    found = await current.ops.list_audit(wanted, pager.fetch, pager.offset)
    return current.render("audit.html", title="Audit log", entries=pager.cut(found), actions=ACTIONS, action=action,
                          subject=subject, token_id=token_id, pager=pager)
