"""The web console: server-rendered pages (Jinja2, no JavaScript) on the admin listener.

Log in with an admin token; the session is a cookie (HttpOnly, SameSite=Strict, and Secure when
the browser came over https: to this listener, or to a TLS proxy in ACME_RA_TRUSTED_PROXIES that
says ``X-Forwarded-Proto: https``) that names the token and an expiry under an HMAC, and is refused
as soon as the token is revoked. Every form carries a CSRF token derived from the session.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs

import jinja2
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from acme_ra.db.audit import Actor
from acme_ra.db.models import OrderStatus
from acme_ra.sealing import derive_key
from acme_ra_admin import charts, schemas, tokens
from acme_ra_admin.api import client_address
from acme_ra_admin.operations import AdminOperations, OperationError
from acme_ra_admin.paging import Pager

log = logging.getLogger("acme_ra_admin.console")

SESSION_COOKIE = "acme_ra_admin_session"
# How long a console session lasts (seconds).
SESSION_LIFETIME_SECONDS = 8 * 3600
# Rows on a console list page.
PAGE_ROWS = 100
# The largest form body the console reads (bytes).
MAX_FORM_BYTES = 16_384

TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)
TEMPLATES.filters["when"] = lambda value: value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else ""

# Sent with every console page: no scripts at all, no framing, nothing sent elsewhere.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

NAV = [("/orders", "Orders"), ("/certificates", "Certificates"), ("/inventory", "Inventory"), ("/accounts", "Accounts"),
       ("/eab-keys", "EAB keys"), ("/upstream", "Upstream"), ("/renewals", "Renewals"),
       ("/queues", "Queues"), ("/policy", "Policy"), ("/audit", "Audit log")]


def session_key(secret: bytes) -> bytes:
    """The console's signing key, derived (HKDF, a key of its own) from ACME_RA_SECRET_KEY."""
    return derive_key(secret, "admin console session")


Networks = list[ipaddress.IPv4Network | ipaddress.IPv6Network]


def trusted_networks(setting: str) -> Networks:
    """ACME_RA_TRUSTED_PROXIES as networks."""
    return [ipaddress.ip_network(v.strip(), strict=False) for v in setting.split(",") if v.strip()]


def came_over_https(request: Request, proxies: Networks) -> bool:
    """Whether the browser reached the console over https: this listener's own TLS, or a TLS proxy
    in ACME_RA_TRUSTED_PROXIES that says so (``X-Forwarded-Proto: https``; anyone else's is ignored)."""
    if request.url.scheme == "https":
        return True
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    if forwarded != "https" or request.client is None:
        return False
    try:
        peer = ipaddress.ip_address(request.client.host)
    except ValueError:
        return False
    return any(peer in network for network in proxies)


def _mac(key: bytes, text: str) -> str:
    return base64.urlsafe_b64encode(hmac.new(key, text.encode(), hashlib.sha256).digest()).rstrip(b"=").decode()


def make_session(key: bytes, token_id: str, now: float | None = None) -> str:
    expires = int((now or time.time()) + SESSION_LIFETIME_SECONDS)
    body = f"{token_id}.{expires}"
    return f"{body}.{_mac(key, body)}"


def session_token_id(key: bytes, cookie: str | None, now: float | None = None) -> str | None:
    """The token id a well-formed, unexpired, untampered session cookie names."""
    if not cookie or cookie.count(".") != 2:
        return None
    token_id, expires, mac = cookie.split(".")
    if not hmac.compare_digest(mac, _mac(key, f"{token_id}.{expires}")):
        return None
    if not (expires.isascii() and expires.isdigit()) or int(expires) < (now or time.time()):
        return None
    return token_id


def csrf_token(key: bytes, cookie: str) -> str:
    return _mac(key, "csrf:" + cookie)


class Page:
    """What one console request has: the operations, the session, and how to render."""

    def __init__(self, request: Request, token_id: str | None, label: str = "", may_change: bool = False) -> None:
        self.request = request
        self.ops: AdminOperations = request.app.state.ops
        self.key: bytes = request.app.state.session_key
        self.token_id = token_id
        self.label = label
        # False for a read-only token: the console shows no forms that change anything.
        self.may_change = may_change
        self.cookie = request.cookies.get(SESSION_COOKIE, "")

    @property
    def actor(self) -> Actor:
        """Who acts, for the audit log: the session's token and the browser's address."""
        assert self.token_id is not None
        return Actor.token(self.token_id, self.label, client_address(self.request))

    @property
    def csrf(self) -> str:
        return csrf_token(self.key, self.cookie)

    def render(self, template: str, code: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("notice", None)
        context.setdefault("error", None)
        html = TEMPLATES.get_template(template).render(
            nav=NAV, path=self.request.url.path, csrf=self.csrf if self.token_id else "",
            logged_in=self.token_id is not None, may_change=self.may_change, **context,
        )
        return HTMLResponse(html, status_code=code, headers=SECURITY_HEADERS)


async def current_page(request: Request) -> Page | None:
    """The page of a logged-in session, or None (then the caller redirects to the login)."""
    key: bytes = request.app.state.session_key
    token_id = session_token_id(key, request.cookies.get(SESSION_COOKIE))
    if token_id is None:
        return None
    ops: AdminOperations = request.app.state.ops
    async with ops.db.transaction() as session:
        row = await tokens.live_token(session, token_id)
    if row is None:
        return None
    return Page(request, token_id, row.label, tokens.may_change(row))


class LoginRequired(Exception):
    """A console page asked for without a live session: answered by the login page (app.py)."""


async def logged_in(request: Request) -> Page:
    """The dependency of every console page but the login: the session's page."""
    page = await current_page(request)
    if page is None:
        raise LoginRequired
    return page


# A route's parameter of this type gets the logged-in session's page (or the login page is sent).
LoggedIn = Annotated[Page, Depends(logged_in)]


async def read_form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return {}
    return {k: v[-1] for k, v in parse_qs(body.decode(errors="replace"), keep_blank_values=True).items()}


async def checked_form(page: Page) -> dict[str, str] | None:
    """The form of a POST whose CSRF token matches the session, else None."""
    form = await read_form(page.request)
    if not hmac.compare_digest(form.get("csrf", ""), page.csrf):
        log.warning("admin console: CSRF token mismatch", extra={
            "path": page.request.url.path, "client": client_address(page.request),
        })
        return None
    return form


def to_login() -> RedirectResponse:
    return RedirectResponse("/login", status_code=303, headers=SECURITY_HEADERS)


def forbidden(page: Page) -> HTMLResponse:
    return page.render("message.html", code=403, title="Forbidden",
                       error="The form has expired or did not come from this console. Reload the page and try again.")


router = APIRouter(include_in_schema=False)


PageRenderer = Callable[..., Awaitable[HTMLResponse]]


async def form_action(page: Page, render: PageRenderer,
                      act: Callable[[Page, dict[str, str]], Awaitable[dict[str, Any]]]) -> Response:
    """A console form of a logged-in session: its CSRF token checked, then ``act``; the list page
    again, with what ``act`` returns (a notice, a new key) or the operation's error and status."""
    form = await checked_form(page)
    if form is None:
        return forbidden(page)
    try:
        context = await act(page, form)
    except OperationError as error:
        return await render(page, status=error.status, error=error.detail)
    return await render(page, **context)


@router.get("/")
async def home(request: Request) -> Response:
    return RedirectResponse("/orders" if await current_page(request) else "/login", status_code=303)


@router.get("/console.css")
async def stylesheet() -> Response:
    css = (Path(__file__).parent / "templates" / "console.css").read_text()
    return Response(css, media_type="text/css", headers={"Cache-Control": "max-age=3600"})


@router.get("/login")
async def login_form(request: Request) -> Response:
    return Page(request, None).render("login.html", title="Log in")


@router.post("/login")
async def login(request: Request) -> Response:
    form = await read_form(request)
    ops: AdminOperations = request.app.state.ops
    async with ops.db.transaction() as session:
        row = await tokens.authenticate(session, form.get("token", "").strip())
    if row is None:
        log.warning("admin console: login refused", extra={"client": client_address(request),
                                                          "reason": "unknown or revoked token"})
        return Page(request, None).render("login.html", code=401, title="Log in",
                                          error="That is not a valid admin token.")
    log.info("admin console: login", extra={"client": client_address(request), "token_id": row.id})
    response = RedirectResponse("/orders", status_code=303, headers=SECURITY_HEADERS)
    response.set_cookie(
        SESSION_COOKIE, make_session(request.app.state.session_key, row.id), max_age=SESSION_LIFETIME_SECONDS,
        httponly=True, samesite="strict", secure=came_over_https(request, request.app.state.trusted_proxies), path="/",
    )
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    page = await current_page(request)
    if page is not None and await checked_form(page) is None:
        return forbidden(page)
    response = to_login()
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.get("/orders")
async def orders(current: LoggedIn, status: str = "", account: str = "", q: str = "", page: str = "1",
                 rows: str = "") -> Response:
    status = status if status in OrderStatus.__members__ else ""
    pager = Pager.of(page, rows, {"status": status, "account": account, "q": q})
    found = await current.ops.list_orders(status or None, account.strip() or None, pager.fetch, pager.offset,
                                          q[:200].strip() or None)
    return current.render("orders.html", title="Orders", orders=pager.cut(found), status=status, account=account,
                          q=q, pager=pager, statuses=list(OrderStatus.__members__))


@router.get("/orders/{order_id}")
async def order(page: LoggedIn, order_id: str) -> Response:
    try:
        detail = await page.ops.get_order(order_id)
    except OperationError as error:
        return page.render("message.html", code=error.status, title="Order", error=error.detail)
    return page.render("order.html", title=f"Order {order_id}", order=detail)


@router.get("/inventory")
async def inventory_page(page: LoggedIn, upstream: str = "") -> Response:
    found = await page.ops.inventory(upstream or None)
    weeks = [(found.now + dt.timedelta(weeks=week)).strftime("%d %b") for week in range(len(found.expiring_per_week))]
    days = [(found.now - dt.timedelta(days=day)).strftime("%d %b") for day in reversed(range(len(found.issued_per_day)))]
    return page.render(
        "inventory.html", title="Inventory", inventory=found, upstream=upstream,
        expiring_chart=charts.bar_chart("expiring-per-week", "Certificates expiring per week (from the week of "
                                        f"{weeks[0]})", found.expiring_per_week, [f"week of {w}" for w in weeks]),
        issued_chart=charts.bar_chart("issued-per-day", "Certificates issued per day", found.issued_per_day, days),
    )


@router.get("/accounts")
async def accounts(page: LoggedIn) -> Response:
    return await accounts_page(page)


async def accounts_page(page: Page, status: int = 200, **context: Any) -> HTMLResponse:
    rows = await page.ops.list_accounts(limit=PAGE_ROWS)
    return page.render("accounts.html", code=status, title="Accounts", accounts=rows, **context)


@router.post("/accounts/{account_id}/deactivate")
async def deactivate_account(page: LoggedIn, account_id: str) -> Response:
    async def act(page: Page, _form: dict[str, str]) -> dict[str, Any]:
        await page.ops.deactivate_account(account_id, actor=page.actor)
        return {"notice": f"Account {account_id} deactivated."}

    return await form_action(page, accounts_page, act)


@router.get("/eab-keys")
async def eab_keys(page: LoggedIn) -> Response:
    return await eab_keys_page(page)


async def eab_keys_page(page: Page, status: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("new_key", None)
    rows = await page.ops.list_eab_keys()
    return page.render("eab_keys.html", code=status, title="EAB keys", keys=rows,
                       profiles=list(page.ops.settings.profile_descriptions), **context)


@router.post("/eab-keys")
async def create_eab_key(page: LoggedIn) -> Response:
    def rules(text: str) -> list[str]:
        return [rule for rule in text.replace("\n", ",").split(",") if rule.strip()]

    async def act(page: Page, form: dict[str, str]) -> dict[str, Any]:
        new_key = await page.ops.create_eab_key(schemas.EabKeyCreate(
            label=form.get("label", "")[:200],
            allow=rules(form.get("allow", "")),
            deny=rules(form.get("deny", "")),
            wildcards=form.get("no_wildcards") != "on",
            profile=form.get("profile") or None,
        ), actor=page.actor)
        return {"new_key": new_key}

    return await form_action(page, eab_keys_page, act)


@router.post("/eab-keys/{kid}/revoke")
async def revoke_eab_key(page: LoggedIn, kid: str) -> Response:
    async def act(page: Page, _form: dict[str, str]) -> dict[str, Any]:
        await page.ops.revoke_eab_key(kid, actor=page.actor)
        return {"notice": f"EAB key {kid} revoked."}

    return await form_action(page, eab_keys_page, act)


@router.get("/upstream")
async def upstream(page: LoggedIn) -> Response:
    return page.render("upstream.html", title="Upstream", status=await page.ops.upstream_status())


@router.get("/queues")
async def queues(page: LoggedIn) -> Response:
    return page.render("queues.html", title="Queues", queues=await page.ops.queue_status())


@router.get("/policy")
async def policy(page: LoggedIn) -> Response:
    return page.render("policy.html", title="Policy", policy=await page.ops.policy())
