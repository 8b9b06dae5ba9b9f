"""CAA checked again at finalization (checklist V6): the validators' answer on acme.rpc.caa, with
the same rules as at validation time (acme_ra_validator.caa_recheck)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from acme_ra import bus
from acme_ra_validator.caa_recheck import CaaRecheckResponder
from tests.support.nats import nats_server

from .conftest import DnsLab

IDENTITIES = ("ca.example",)
ACCOUNT = "https://ra.example:8443/acme/acme/account/acct1"


def request(*checks: tuple[str, bool, str]) -> bus.CaaRecheckRequest:
    return bus.CaaRecheckRequest(
        account_uri=ACCOUNT, checks=[bus.CaaCheck(name=n, wildcard=w, method=m) for n, w, m in checks]
    )


async def test_permitted_and_refused_as_at_validation(dns_lab: DnsLab) -> None:
    dns_lab.zone.add_caa("ok.example.test.", "issue", "ca.example; validationmethods=dns-01")
    dns_lab.zone.add_caa("ok.example.test.", "issuewild", ";")
    dns_lab.zone.add_caa("other.example.test.", "issue", "letsencrypt.org")
    responder = CaaRecheckResponder(dns_lab.resolver(), IDENTITIES)
    assert (await responder.recheck(request(("ok.example.test", False, "dns-01")))).outcome == "permitted"
    for checks in [("ok.example.test", False, "http-01")], [("ok.example.test", True, "dns-01")], \
            [("ok.example.test", False, "dns-01"), ("other.example.test", False, "dns-01")]:
        reply = await responder.recheck(request(*checks))
        assert reply.outcome == "refused" and reply.problem and reply.problem["type"] == "caa", checks
    no_identities = CaaRecheckResponder(dns_lab.resolver(), ())
    assert (await no_identities.recheck(request(("other.example.test", False, "dns-01")))).outcome == "permitted"


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    with nats_server(tmp_path) as server:
        yield server.url


async def test_answers_on_the_bus(dns_lab: DnsLab, nats_url: str) -> None:
    dns_lab.zone.add_caa("bus.example.test.", "issue", "letsencrypt.org")
    nc = await nats.connect(nats_url)
    try:
        await CaaRecheckResponder(dns_lab.resolver(), IDENTITIES).subscribe(nc)
        message = await nc.request(bus.SUBJECT_CAA_RPC, request(("bus.example.test", False, "http-01")).model_dump_json().encode(),
                                   timeout=bus.CAA_RPC_TIMEOUT_SECONDS)
        reply = bus.CaaRecheckReply.model_validate_json(message.data)
        assert reply.outcome == "refused" and reply.problem and "bus.example.test" in reply.problem["detail"]
        garbage = bus.CaaRecheckReply.model_validate_json((await nc.request(bus.SUBJECT_CAA_RPC, b"{", timeout=5)).data)
        assert garbage.outcome == "refused"
    finally:
        await nc.close()
