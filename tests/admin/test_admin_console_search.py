"""The console in process: certificates and orders searched by name and serial, page by page; a
revocation only through its confirmation step. (In Chromium, beside the lab:
test_admin_console_browser.)"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select, update

from acme_ra.db.models import Certificate
from acme_ra_admin.repository import normal_serial
from tests.support.history import History

from .conftest import AdminApp
from .test_admin_console import FORM, log_in


async def certificates(admin_app: AdminApp, count: int, names: str) -> list[tuple[str, str]]:
    """``count`` certificates for ``<i>.<names>``, newest first: (id, serial in hex)."""
    history = History(admin_app.ops.db)
    await history.start()
    now = dt.datetime.now(dt.UTC)
    made = []
    for i in range(count):
        order_id, _ = await history.order("valid", now, not_after=now + dt.timedelta(days=60), names=f"n{i:02}.{names}",
                                          created=now - dt.timedelta(minutes=i))
        serial = format(0x0A0B0C0D0E0F00 + i, "x")
        async with admin_app.ops.db.transaction() as session:
            await session.execute(update(Certificate).where(Certificate.order_id == order_id).values(serial=serial))
            certificate_id = await session.scalar(select(Certificate.id).where(Certificate.order_id == order_id))
        made.append((str(certificate_id), serial))
    return made


def ids_in(page: str) -> list[str]:
    return [part.split('"', 1)[0] for part in page.split('data-certificate="')[1:]]


def test_serials_are_read_as_people_write_them() -> None:
    assert normal_serial("0A:0B:0C") == normal_serial("a0b0c") == normal_serial(" 0a 0b 0c ") == "a0b0c"
    assert normal_serial("00") == "0"
    assert normal_serial("physics.example.edu") is None and normal_serial("0a:") is None


async def test_search_by_name_and_serial_and_pages(admin_app: AdminApp) -> None:
    made = await certificates(admin_app, 30, "paging.example.edu")
    others = await certificates(admin_app, 2, "other.example.edu")
    await log_in(admin_app)
    client = admin_app.client

    first = (await client.get("/certificates", params={"q": "PAGING.example.edu", "rows": "25"})).text
    assert ids_in(first) == [c for c, _ in made[:25]]
    assert 'href="?q=PAGING.example.edu&amp;rows=25&amp;page=2"' in first and 'id="previous-page"' not in first
    second = (await client.get("/certificates", params={"q": "PAGING.example.edu", "rows": "25", "page": "2"})).text
    assert ids_in(second) == [c for c, _ in made[25:]]
    assert 'id="next-page"' not in second and 'href="?q=PAGING.example.edu&amp;rows=25"' in second

    certificate_id, serial = made[7]
    spelled = ":".join(f"{int(serial, 16):016X}"[i:i + 2] for i in range(0, 16, 2))  # 00:0A:0B:...
    for query in (spelled, serial.upper(), serial):
        assert ids_in((await client.get("/certificates", params={"q": query})).text) == [certificate_id], query
    nothing = (await client.get("/certificates", params={"q": "nothing.example.edu"})).text
    assert ids_in(nothing) == [] and "No certificate matches" in nothing
    everything = ids_in((await client.get("/certificates")).text)
    assert set(everything) == {c for c, _ in made + others}

    orders = (await client.get("/orders", params={"q": "n03.paging", "rows": "25"})).text
    assert orders.count("data-order=") == 1 and "n03.paging.example.edu" in orders
    assert (await client.get("/orders", params={"q": "paging.example.edu", "rows": "25", "page": "2"})).text.count(
        "data-order=") == 5
    api = (await client.get("/api/certificates", headers=admin_app.auth, params={"q": spelled})).json()
    assert [c["id"] for c in api] == [certificate_id]


async def test_revocation_wants_its_confirmation_step(admin_app: AdminApp) -> None:
    [(certificate_id, serial)] = await certificates(admin_app, 1, "confirm.example.edu")
    csrf = await log_in(admin_app)
    client = admin_app.client

    listed = (await client.get("/certificates")).text
    assert f'method="get" action="/certificates/{certificate_id}/revoke"' in listed
    assert f'method="post" action="/certificates/{certificate_id}/revoke"' not in listed  # no one-click revocation

    confirm = await client.get(f"/certificates/{certificate_id}/revoke", params={"reason": "4"})
    assert confirm.status_code == 200 and f'id="confirm-serial">{serial}<' in confirm.text
    assert '<option value="4" selected>superseded</option>' in confirm.text
    assert f'name="confirm" value="{serial}"' in confirm.text and f'name="csrf" value="{csrf}"' in confirm.text

    # A POST without the confirmation (or with another serial) revokes nothing; nor one without CSRF.
    for body in (f"reason=4&csrf={csrf}", f"reason=4&csrf={csrf}&confirm=abc"):
        refused = await client.post(f"/certificates/{certificate_id}/revoke", content=body, headers=FORM)
        assert refused.status_code == 400 and "confirm the revocation" in refused.text
    no_csrf = await client.post(f"/certificates/{certificate_id}/revoke", content=f"confirm={serial}", headers=FORM)
    assert no_csrf.status_code == 403
    assert (await admin_app.ops.get_certificate(certificate_id)).status == "valid"

    # Confirmed: it goes on to the signer (no NATS here: 503, and still nothing revoked or audited).
    confirmed = await client.post(f"/certificates/{certificate_id}/revoke",
                                  content=f"reason=4&csrf={csrf}&confirm={serial}", headers=FORM)
    assert confirmed.status_code == 503 and "ACME_RA_NATS_URL is not set" in confirmed.text
    assert (await admin_app.ops.get_certificate(certificate_id)).status == "valid"
    assert [e.action for e in await admin_app.ops.list_audit()] == ["admin_token.create"]
    assert (await client.get("/certificates/nope/revoke")).status_code == 404
