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
