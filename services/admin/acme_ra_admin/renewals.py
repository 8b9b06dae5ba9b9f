"""Renewals an operator drives: ``acme-ra certs renew-early`` and the progress of a CA switch.

renew-early moves the renewal window (RFC 9773) of a set of certificates into the past, which
tells ARI clients (certbot >= 4.1, lego, cert-manager) to renew on their next run; their new
orders carry ``replaces``. It is stored in ``renewal_windows`` (an operator's window, which the
signer's ARI relay never overwrites) and served by the frontends' renewalInfo. The set is chosen
by one of: the upstream that issued them, a serial, a name, a profile; only certificates still
valid (neither expired nor revoked) are moved.

The switch progress counts, per upstream, its certificates still valid and how many of them
were replaced already (a later certificate for the same names, or an order that ``replaces``
it): after a CA switch, the old upstream's "to replace" falls to zero as clients renew.

The two operations and the CLI (``register``) are here; the admin API and the console's page
are ``renewal_routes.py``.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import BaseModel, Field

from acme_ra_admin.commandline import Json, Token, Url

if TYPE_CHECKING:  # the rest is imported when used: `acme-ra` starts without SQLAlchemy
    from acme_ra.db.audit import Actor
    from acme_ra.db.engine import Database

# The operator's window: it ended this long before the request and lasted an hour, so that it
# is in the past for every frontend even with a few minutes of clock skew (RFC 9773 §4.2: a
# window entirely in the past means "renew now").
WINDOW_END_BEFORE = dt.timedelta(minutes=5)
WINDOW_LENGTH = dt.timedelta(hours=1)
# Serials echoed back in the result (the count is always complete).
SHOWN_SERIALS = 100
SELECTORS = ("upstream", "serial", "name", "profile")
SOURCE_OPERATOR = "operator"  # renewal_relay.SOURCE_OPERATOR, which the signer never overwrites


class RenewEarly(BaseModel):
    """Exactly one of ``upstream``, ``serial``, ``name``, ``profile``."""

    upstream: str | None = Field(None, max_length=64)
    serial: str | None = Field(None, max_length=200)
    name: str | None = Field(None, max_length=253)
    profile: str | None = Field(None, max_length=64)
    reason_url: str | None = Field(None, max_length=1024)


def normalized_serial(text: str) -> str:
    """A serial as stored: lowercase hex, no colons or spaces, no leading zeros."""
    from acme_ra_admin.operations import OperationError

    value = re.sub(r"[\s:]", "", text).lower().removeprefix("0x")
    if not value or not re.fullmatch(r"[0-9a-f]+", value):
        raise OperationError(f"serial {text!r}: expected hex digits, with or without colons")
    return value.lstrip("0") or "0"


def _selection(request: RenewEarly) -> tuple[str, str]:
    from acme_ra_admin.operations import OperationError

    given = [(key, getattr(request, key)) for key in SELECTORS if getattr(request, key)]
    if len(given) != 1:
        raise OperationError("give exactly one of --upstream, --serial, --name, --profile")
    key, value = given[0]
    if request.reason_url is not None and not re.match(r"https?://\S+$", request.reason_url):
        raise OperationError(f"reason URL {request.reason_url!r}: expected an http(s) URL")
    return key, normalized_serial(value) if key == "serial" else str(value).strip()


def _has_name(identifiers: Any, name: str) -> bool:
    return any(isinstance(i, dict) and str(i.get("value", "")).lower() == name for i in identifiers or ())


async def renew_early(db: Database, request: RenewEarly, actor: Actor | None = None,
                      now: dt.datetime | None = None) -> dict[str, Any]:
    """Move the windows of the selected valid certificates into the past, recorded in the audit log
    as ``actor``'s (None: the local ``acme-ra``) in the same transaction; what was moved."""
    from sqlalchemy import delete, select

    from acme_ra.db import audit, inventory
    from acme_ra.db.models import Certificate, Order, RenewalWindow, UpstreamOrder, utcnow
    from acme_ra_admin.operations import NotFound

    key, value = _selection(request)
    now = now or utcnow()
    query = (
        select(Certificate.id, Certificate.serial, Order.identifiers, inventory.upstream_label().label("upstream"))
        .join(Order, Order.id == Certificate.order_id)
        .outerjoin(UpstreamOrder, UpstreamOrder.order_id == Certificate.order_id)
        .where(Certificate.not_after > now, Certificate.revoked_at.is_(None))
    )
    if key == "upstream":
        query = query.where(inventory.upstream_label() == value)
    elif key == "serial":
        query = query.where(Certificate.serial == value)
    elif key == "profile":
        query = query.where(Order.profile == value)
    start, end = now - WINDOW_END_BEFORE - WINDOW_LENGTH, now - WINDOW_END_BEFORE
    async with db.transaction() as session:
        rows = (await session.execute(query.order_by(Certificate.created_at))).all()
        if key == "name":
            name = value.lower().rstrip(".")
            rows = [row for row in rows if _has_name(row.identifiers, name)]
        if not rows:
            raise NotFound(f"no valid (unexpired, unrevoked) certificate with {key} {value!r}")
        ids = [row.id for row in rows]
        for chunk in range(0, len(ids), 500):
            part = ids[chunk:chunk + 500]
            await session.execute(delete(RenewalWindow).where(RenewalWindow.certificate_id.in_(part)))
        session.add_all(
            RenewalWindow(certificate_id=row.id, source=SOURCE_OPERATOR, upstream=row.upstream, start=start, end=end,
                          explanation_url=request.reason_url, next_fetch_at=None, fetch_failures=0, updated_at=now)
            for row in rows
        )
        await audit.record(session, actor or audit.Actor.local(), "certificate.renew_early", f"{key}={value}",
                           {"certificates": len(rows), "reason_url": request.reason_url,
                            "serials": [row.serial for row in rows[:SHOWN_SERIALS]]})
    result = {
        "selected_by": key,
        "value": value,
        "certificates": len(rows),
        "window": {"start": start.isoformat(), "end": end.isoformat()},
        "explanation_url": request.reason_url,
        "serials": [row.serial for row in rows[:SHOWN_SERIALS]],
    }
    return result


async def switch_progress(db: Database, now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """Per upstream: its valid certificates, how many are replaced, how many are still to
    replace, and how many of those have their window moved by renew-early."""
    from sqlalchemy import and_, case, exists, func, or_, select

    from acme_ra.db import inventory
    from acme_ra.db.models import Certificate, Order, RenewalWindow, UpstreamOrder, utcnow

    now = now or utcnow()
    later = select(Order.id).where(Order.replaces == Certificate.ari_cert_id, Order.certificate_id.is_not(None))
    replaced = or_(inventory.replaced(), exists(later))
    early = exists().where(RenewalWindow.certificate_id == Certificate.id, RenewalWindow.source == SOURCE_OPERATOR)
    label = inventory.upstream_label()
    query = (
        select(
            label.label("upstream"),
            func.count().label("valid"),
            func.sum(case((replaced, 1), else_=0)).label("replaced"),
            func.sum(case((and_(early, ~replaced), 1), else_=0)).label("renew_early"),
        )
        .select_from(Certificate)
        .outerjoin(UpstreamOrder, UpstreamOrder.order_id == Certificate.order_id)
        .where(Certificate.not_after > now, Certificate.revoked_at.is_(None))
        .group_by(label)
        .order_by(label)
    )
    async with db.transaction() as session:
        rows = (await session.execute(query)).all()
    return [
        {"upstream": row.upstream, "valid": int(row.valid), "replaced": int(row.replaced or 0),
         "to_replace": int(row.valid) - int(row.replaced or 0), "renew_early": int(row.renew_early or 0)}
        for row in rows
    ]


# CLI ------------------------------------------------------------------------------------------

def register(certs_app: typer.Typer) -> None:
    """Add ``renew-early`` and ``switch-progress`` to ``acme-ra certs``."""
    from acme_ra_admin.commandline import call, emit_json, run, table

    @certs_app.command("renew-early")
    def certs_renew_early(
        upstream: Annotated[str | None, typer.Option("--upstream", metavar="NAME", help="issued through this upstream")] = None,
        serial: Annotated[str | None, typer.Option("--serial", metavar="HEX", help="this serial (hex, any case, colons or not)")] = None,
        name: Annotated[str | None, typer.Option("--name", metavar="NAME", help="certificates for this DNS name or IP")] = None,
        profile: Annotated[str | None, typer.Option("--profile", metavar="PROFILE", help="certificates of this ACME profile")] = None,
        reason_url: Annotated[str | None, typer.Option("--reason-url", metavar="URL", help="explanationURL served to clients")] = None,
        as_json: Json = False, url: Url = None, token: Token = None,
    ) -> None:
        """Move the renewal window (RFC 9773) of valid certificates into the past: ARI clients
        (certbot >= 4.1, lego, cert-manager) renew them on their next run."""

        def body() -> None:
            request = RenewEarly(upstream=upstream, serial=serial, name=name, profile=profile, reason_url=reason_url)
            _selection(request)  # usage errors before any connection
            result = call(url, token, "POST", "/certificates/renew-early",
                          lambda ops: renew_early(ops.db, request),
                          body=request.model_dump(exclude_none=True))
            if as_json:
                emit_json(result)
                return
            typer.echo(f"Renewal window moved into the past for {result['certificates']} certificate(s) "
                       f"({result['selected_by']} {result['value']}); ARI clients renew on their next run.")
            shown = result["serials"]
            more = result["certificates"] - len(shown)
            typer.echo("serials: " + ", ".join(shown) + (f" and {more} more" if more > 0 else ""))

        run(_usage_errors(body))

    @certs_app.command("switch-progress")
    def certs_switch_progress(as_json: Json = False, url: Url = None, token: Token = None) -> None:
        """Per upstream: valid certificates, already replaced, still to replace (after a CA switch)."""

        def body() -> None:
            result = call(url, token, "GET", "/renewals/progress", lambda ops: switch_progress(ops.db))
            if as_json:
                emit_json(result)
                return
            table(result, [("upstream", "UPSTREAM"), ("valid", "VALID"), ("replaced", "REPLACED"),
                           ("to_replace", "TO REPLACE"), ("renew_early", "RENEW-EARLY SET")])

        run(body)


def _usage_errors(body: Any) -> Any:
    """``body`` with an OperationError from the local checks as a usage error (exit 2)."""
    from acme_ra_admin.commandline import EXIT_USAGE, CommandError
    from acme_ra_admin.operations import OperationError

    def wrapped() -> None:
        try:
            body()
        except OperationError as error:
            raise CommandError(error.detail, EXIT_USAGE) from None

    return wrapped
