"""The admin API's and the console's renewals: renew-early and the CA switch progress
(``renewals.py`` holds the operations and the CLI)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Response

from acme_ra_admin import api, console
from acme_ra_admin.operations import AdminOperations, OperationError
from acme_ra_admin.renewals import SELECTORS, RenewEarly, renew_early, switch_progress

# Admin API (under /api/, bearer token) ------------------------------------------------------

api_router = APIRouter(prefix=api.PREFIX, dependencies=[Depends(api.require_token)], responses=api.ERRORS)


@api_router.post("/certificates/renew-early", tags=["certificates"])
async def renew_early_route(body: RenewEarly, ops: api.Ops, who: api.Who) -> dict[str, Any]:
    """Move the renewal window (RFC 9773) of the selected valid certificates into the past:
    exactly one of upstream, serial, name, profile."""
    return await renew_early(ops.db, body, who)


@api_router.get("/renewals/progress", tags=["certificates"])
async def progress_route(ops: api.Ops) -> list[dict[str, Any]]:
    """Per upstream: valid certificates, replaced, still to replace, renew-early set."""
    return await switch_progress(ops.db)


# Console ------------------------------------------------------------------------------------

console_router = APIRouter(include_in_schema=False)


async def render(page: console.Page, status: int = 200, **context: Any) -> Any:
    progress = await switch_progress(page.ops.db)
    return page.render("renewals.html", code=status, title="Renewals", progress=progress, **context)


@console_router.get("/renewals")
async def renewals_page(page: console.LoggedIn) -> Response:
    response: Response = await render(page)
    return response


@console_router.post("/renewals/renew-early")
async def renew_early_form(page: console.LoggedIn) -> Response:
    async def act(page: console.Page, form: dict[str, str]) -> dict[str, Any]:
        selector = form.get("selector", "")
        if selector not in SELECTORS:
            raise OperationError("choose what to select by: upstream, serial, name or profile")
        body = RenewEarly(**{selector: form.get("value", "")}, reason_url=form.get("reason_url") or None)
        ops: AdminOperations = page.ops
        result = await renew_early(ops.db, body, page.actor)
        return {"notice": f"Renewal window moved into the past for {result['certificates']} certificate(s) "
                          f"({selector} {result['value']}): ARI clients renew on their next run."}

    return await console.form_action(page, render, act)
