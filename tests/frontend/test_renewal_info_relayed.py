"""renewalInfo (RFC 9773) serves the window stored for a certificate: its upstream's, relayed by
the signer (with its explanationURL), or an operator's renew-early (in the past); revocation
still wins, and certificates without a stored window keep the computed one."""

from __future__ import annotations

import datetime as dt

import httpx
from sqlalchemy import select

from acme_ra.db.models import Certificate, RenewalWindow, utcnow
from tests.conformance.client import TestAcmeClient

from .test_policy_profiles_ari import issued_order


def parsed(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value)


async def store(http: httpx.AsyncClient, cert_id: str, **fields: object) -> None:
    state = http.app.state.ra  # type: ignore[attr-defined]
    async with state.db.transaction() as session:
        cert = (await session.execute(select(Certificate).where(Certificate.ari_cert_id == cert_id))).scalar_one()
        row = await session.get(RenewalWindow, cert.id)
        if row is None:
            session.add(RenewalWindow(certificate_id=cert.id, updated_at=utcnow(), **fields))
        else:
            for key, value in fields.items():
                setattr(row, key, value)


async def test_relayed_and_operator_windows_are_served(account: TestAcmeClient, http: httpx.AsyncClient) -> None:
    cert_id, _pem = await issued_order(account, http, "relayed.example.org")
    url = f"{account.directory['renewalInfo']}/{cert_id}"
    computed = (await http.get(url)).json()
    assert "explanationURL" not in computed

    start = (utcnow() + dt.timedelta(days=20)).replace(microsecond=0)
    await store(http, cert_id, source="upstream", upstream="sectigo", start=start, end=start + dt.timedelta(days=2),
                explanation_url="https://ca.example/why", next_fetch_at=utcnow())
    relayed = await http.get(url)
    assert relayed.status_code == 200, relayed.text
    body = relayed.json()
    assert parsed(body["suggestedWindow"]["start"]) == start
    assert parsed(body["suggestedWindow"]["end"]) == start + dt.timedelta(days=2)
    assert body["explanationURL"] == "https://ca.example/why"
    assert body["suggestedWindow"] != computed["suggestedWindow"]

    # The upstream did not answer yet (no window): the computed one.
    await store(http, cert_id, start=None, end=None)
    assert (await http.get(url)).json() == computed

    past = utcnow() - dt.timedelta(hours=2)
    await store(http, cert_id, source="operator", start=past, end=past + dt.timedelta(hours=1),
                explanation_url=None, next_fetch_at=None)
    window = (await http.get(url)).json()["suggestedWindow"]
    assert parsed(window["end"]) < utcnow()  # entirely in the past: renew now


async def test_retry_after_is_the_setting(account: TestAcmeClient, http: httpx.AsyncClient) -> None:
    cert_id, _pem = await issued_order(account, http, "retry.example.org")
    response = await http.get(f"{account.directory['renewalInfo']}/{cert_id}")
    settings = http.app.state.ra.settings  # type: ignore[attr-defined]
    assert response.headers["retry-after"] == str(settings.ari_retry_after_seconds) == "21600"
