"""The console's certificates: a paged list searched by name or serial, and revocation in two
steps — the list's Revoke button opens a confirmation page (a GET: nothing changes) that names the
certificate; only its form, which carries the CSRF token and the serial it confirms, revokes."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from acme_ra_admin.console import LoggedIn, Page, form_action
from acme_ra_admin.errors import OperationError
from acme_ra_admin.operations import REVOCATION_REASONS, reason_code
from acme_ra_admin.paging import Pager

router = APIRouter(include_in_schema=False)


@router.get("/certificates")
async def certificates(current: LoggedIn, q: str = "", page: str = "1", rows: str = "") -> Response:
    return await certificates_page(current, query=q, page_number=page, rows=rows)


async def certificates_page(page: Page, status: int = 200, query: str = "", page_number: str = "1",
                            rows: str = "", **context: Any) -> HTMLResponse:
    pager = Pager.of(page_number, rows, {"q": query})
    found = await page.ops.list_certificates(limit=pager.fetch, offset=pager.offset, search=query[:200].strip() or None)
    return page.render("certificates.html", code=status, title="Certificates", certificates=pager.cut(found),
                       reasons=REVOCATION_REASONS, q=query, pager=pager, **context)


@router.get("/certificates/{certificate_id}/revoke")
async def confirm_revocation(page: LoggedIn, certificate_id: str, reason: str = "0") -> Response:
    """The confirmation step: what would be revoked, and why."""
    if not page.may_change:
        return page.render("message.html", code=403, title="Revoke a certificate",
                           error="This admin token is read-only: it cannot revoke certificates.")
    try:
        code = reason_code(reason)
        certificate = await page.ops.get_certificate(certificate_id)
    except OperationError as error:
        return page.render("message.html", code=error.status, title="Revoke a certificate", error=error.detail)
    if certificate.status == "revoked":
        return page.render("message.html", code=409, title="Revoke a certificate",
                           error=f"Certificate {certificate.serial} is already revoked.")
    return page.render("revoke_confirm.html", title="Revoke a certificate?", certificate=certificate,
                       reason=code, reasons=REVOCATION_REASONS)


@router.post("/certificates/{certificate_id}/revoke")
async def revoke_certificate(page: LoggedIn, certificate_id: str) -> Response:
    async def act(page: Page, form: dict[str, str]) -> dict[str, Any]:
        certificate = await page.ops.get_certificate(certificate_id)
        if not hmac.compare_digest(form.get("confirm", ""), certificate.serial):
            raise OperationError("Not revoked: confirm the revocation on its confirmation page.")
        result = await page.ops.revoke_certificate(certificate_id, form.get("reason", "0"), actor=page.actor)
        return {"notice": f"Certificate {result.certificate.serial} revoked."}

    return await form_action(page, certificates_page, act)
