"""renew-early's selection in the admin API: one selector, serials in any spelling, what it
refuses; the switch progress of an empty database. (Real clients renewing after it:
tests/interop/test_certbot_renew_early.py; a CA switch: tests/upstream/test_upstream_ca_switch.py.)"""

from __future__ import annotations

import pytest

from acme_ra_admin.operations import OperationError
from acme_ra_admin.renewals import normalized_serial

from .conftest import AdminApp


@pytest.mark.parametrize(("given", "stored"), [
    ("04:A1:9F", "4a19f"), ("04a19f", "4a19f"), ("0x04A19F", "4a19f"), (" 04 a1 9f ", "4a19f"), ("00", "0"),
])
def test_a_serial_in_any_spelling_is_the_stored_one(given: str, stored: str) -> None:
    assert normalized_serial(given) == stored


@pytest.mark.parametrize("bad", ["", "::", "xyz", "04:G1"])
def test_a_serial_that_is_not_hex_is_refused(bad: str) -> None:
    with pytest.raises(OperationError, match="expected hex digits"):
        normalized_serial(bad)


async def test_renew_early_wants_one_selector_and_says_when_nothing_matches(admin_app: AdminApp) -> None:
    url = "/api/certificates/renew-early"
    client, auth = admin_app.client, admin_app.auth
    assert (await client.post(url, json={"upstream": "old-ca"})).status_code == 401
    for body in ({}, {"upstream": "a", "serial": "01"}):
        refused = await client.post(url, json=body, headers=auth)
        assert refused.status_code == 400 and "exactly one of" in refused.json()["detail"], refused.text
    bad_url = await client.post(url, json={"upstream": "a", "reason_url": "javascript:x"}, headers=auth)
    assert bad_url.status_code == 400 and "http(s) URL" in bad_url.json()["detail"]
    missing = await client.post(url, json={"upstream": "old-ca"}, headers=auth)
    assert missing.status_code == 404
    assert missing.json()["detail"] == "no valid (unexpired, unrevoked) certificate with upstream 'old-ca'"
    progress = await client.get("/api/renewals/progress", headers=auth)
    assert progress.status_code == 200 and progress.json() == []


async def test_renew_early_is_in_the_audit_log_with_who_asked(admin_app: AdminApp) -> None:
    """renew-early through the API: the windows move and the change is in the audit log with the
    token's label, the client address, the selection and the count (as for every admin change)."""
    import datetime as dt

    from tests.support.history import History

    history = History(admin_app.ops.db)
    await history.start()
    now = dt.datetime.now(dt.UTC)
    for i in range(2):
        await history.order("valid", now, not_after=now + dt.timedelta(days=60), names=f"r{i}.example.org",
                            upstream="old-ca")
    moved = await admin_app.client.post("/api/certificates/renew-early", headers=admin_app.auth,
                                        json={"upstream": "old-ca", "reason_url": "https://ra.example/why"})
    assert moved.status_code == 200 and moved.json()["certificates"] == 2, moved.text
    audit = await admin_app.client.get("/api/audit", params={"action": "certificate.renew_early"},
                                       headers=admin_app.auth)
    assert audit.status_code == 200, audit.text
    body = audit.json()
    entries = body["entries"] if isinstance(body, dict) else body
    assert len(entries) == 1, entries
    entry = entries[0]
    assert entry["actor"] == "test" and entry["token_id"] and entry["subject"] == "upstream=old-ca"
    assert entry["detail"]["certificates"] == 2 and entry["detail"]["reason_url"] == "https://ra.example/why"
    assert entry["client"]
