"""ACME_RA_DNSSEC against real servers: zones the test signs (dnssec-keygen, dnssec-signzone),
served by BIND9, asked through a validating unbound (the lab's trust anchor) and a
non-validating one (tests/support/dnssec_lab.py). dns-01 and CAA through the validator's
resolver, a job through the worker, and ``python -m acme_ra_validator``'s start-up check."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import nats
import pytest
from prometheus_client import REGISTRY

from acme_ra import bus
from acme_ra.db.engine import Database
from acme_ra_validator.caa import check_caa
from acme_ra_validator.dns01 import check_dns01, txt_record_value
from acme_ra_validator.dns_account01 import account_label as account_label_of
from acme_ra_validator.dns_account01 import check_dns_account01
from acme_ra_validator.dns_persist01 import PersistAccount, check_dns_persist01
from acme_ra_validator.dnssec import DnssecMode, DnssecPolicy, load_trust_anchors
from acme_ra_validator.failure import ValidationFailure
from acme_ra_validator.http01 import ValidationPorts, new_http_client
from acme_ra_validator.resolver import NameResolver
from acme_ra_validator.worker import ChallengeValidator, ValidationOptions
from tests.support.dnssec_lab import DnssecLab, LabZone
from tests.support.nats import nats_server

from .conftest import LAB_POLICY, unused_port
from .rows import insert_pending_order, snapshot

KEY_AUTH = "tok-dnssec.thumbprint-abc"
GOOD = f'"{txt_record_value(KEY_AUTH)}"'
CA = "ca.example"
ACCOUNT_URL = "https://ra.example/acct/1"
BOGUS_DETAIL = "DNSSEC validation failed (DNSSEC Bogus: validation failure <_acme-challenge.bogus.test. TXT IN>"


def lab_zones(good: str = GOOD) -> dict[str, LabZone]:
    """The same records in a signed, a bogus (TXT and CAA changed after signing) and an unsigned
    zone: only DNSSEC tells them apart. With them the account-bound records of dns-account-01 and
    dns-persist-01 (draft challenge types that read TXT through the same resolver)."""
    account_label = account_label_of(ACCOUNT_URL)
    persist = f'"{CA}; accounturi={ACCOUNT_URL}"'
    records = [f"_acme-challenge IN TXT {good}", f'@ IN CAA 0 issue "{CA}"',
               f"{account_label}._acme-challenge IN TXT {good}", f"_validation-persist IN TXT {persist}"]
    return {
        "signed": LabZone("signed.test.", records),
        "bogus": LabZone(
            "bogus.test.",
            ['_acme-challenge IN TXT "before-tampering"', '@ IN CAA 0 issue "other.example"',
             f'{account_label}._acme-challenge IN TXT "account-before-tampering"',
             '_validation-persist IN TXT "persist-before-tampering"'],
            tamper={'"before-tampering"': good, '"other.example"': f'"{CA}"',
                    '"account-before-tampering"': good, '"persist-before-tampering"': persist},
        ),
        "unsigned": LabZone("unsigned.test.", records, signed=False),
        "unsigned-nocaa": LabZone("unsigned-nocaa.test.", [f"_acme-challenge IN TXT {good}"], signed=False),
    }


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnssecLab]:
    servers = DnssecLab(tmp_path_factory.mktemp("dnssec"), lab_zones())
    try:
        yield servers
    finally:
        servers.stop()


def resolver(lab: DnssecLab, mode: str, *, validating: bool = True, anchors: Path | None = None) -> NameResolver:
    settings = SimpleNamespace(dnssec=mode, dnssec_trust_anchors_file=anchors or lab.anchors_file)
    address = lab.validating if validating else lab.non_validating
    return NameResolver([address], lifetime=5.0, dnssec=DnssecPolicy.from_settings(settings))


def lookups(outcome: str) -> float:
    return REGISTRY.get_sample_value("acme_ra_validator_dnssec_lookups_total", {"outcome": outcome}) or 0.0


async def caa(names: NameResolver, name: str) -> None:
    await check_caa(names, name, wildcard=False, identities=(CA,), account_uri="https://ra.example/acct/1",
                    method="dns-01")


def test_default_trust_anchors_are_the_root_ksks() -> None:
    anchors = load_trust_anchors(None)
    assert [(a.name.to_text(), sorted(ds.key_tag for ds in a)) for a in anchors] == [(".", [20326, 38696])]


def test_a_file_without_anchors_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "anchors"
    empty.write_text("example. 60 IN TXT \"no anchor\"\n")
    with pytest.raises(ValueError, match="no DS or DNSKEY record"):
        load_trust_anchors(empty)


async def test_validate_accepts_a_signed_zone(lab: DnssecLab) -> None:
    names = resolver(lab, "validate")
    assert await names.check_dnssec() is None
    before = lookups("secure")
    await check_dns01(names, "signed.test", KEY_AUTH)
    await caa(names, "www.signed.test")  # NXDOMAIN at www (proven by NSEC), the record at the apex
    assert lookups("secure") >= before + 2


async def test_validate_refuses_a_bogus_zone_with_a_dns_problem(lab: DnssecLab) -> None:
    names = resolver(lab, "validate")
    before = lookups("bogus")
    with pytest.raises(ValidationFailure) as failure:
        await check_dns01(names, "bogus.test", KEY_AUTH)
    assert failure.value.type == "dns"
    assert failure.value.detail.startswith(f"DNS problem: {BOGUS_DETAIL}")
    assert failure.value.detail.endswith("looking up TXT for _acme-challenge.bogus.test")
    with pytest.raises(ValidationFailure) as refused:
        await caa(names, "bogus.test")
    assert refused.value.type == "dns" and "DNSSEC Bogus" in refused.value.detail
    assert lookups("bogus") == before + 2


async def persist(names: NameResolver, domain: str) -> None:
    account = PersistAccount(ACCOUNT_URL, "thumbprint-abc", "https://ra.example/acct/")
    await check_dns_persist01(names, domain, wildcard=False, account=account, issuer_domains=(CA,))


async def test_the_account_bound_dns_challenges_are_dnssec_checked(lab: DnssecLab) -> None:
    """dns-account-01 and dns-persist-01: valid in the signed zone, a dns problem in the bogus one
    (whose records say the same after tampering), valid in an unsigned zone under validate only."""
    names = resolver(lab, "validate")
    await check_dns_account01(names, "signed.test", ACCOUNT_URL, KEY_AUTH)
    await persist(names, "signed.test")
    for check in (check_dns_account01(names, "bogus.test", ACCOUNT_URL, KEY_AUTH), persist(names, "bogus.test")):
        with pytest.raises(ValidationFailure) as failure:
            await check
        assert failure.value.type == "dns" and "DNSSEC Bogus" in failure.value.detail, failure.value.detail
    await check_dns_account01(resolver(lab, "off", validating=False), "bogus.test", ACCOUNT_URL, KEY_AUTH)
    await persist(names, "unsigned.test")
    with pytest.raises(ValidationFailure) as unsigned:
        await persist(resolver(lab, "require-signed"), "unsigned.test")
    assert unsigned.value.type == "dns", unsigned.value.detail


async def test_dnssec_off_passes_what_the_resolver_passes(lab: DnssecLab) -> None:
    # The non-validating resolver hands out the tampered record: only DNSSEC catches it.
    await check_dns01(resolver(lab, "off", validating=False), "bogus.test", KEY_AUTH)


async def test_validate_accepts_an_unsigned_zone_and_require_signed_refuses_it(lab: DnssecLab) -> None:
    await check_dns01(resolver(lab, "validate"), "unsigned.test", KEY_AUTH)
    await caa(resolver(lab, "validate"), "unsigned-nocaa.test")

    strict = resolver(lab, "require-signed")
    await check_dns01(strict, "signed.test", KEY_AUTH)
    await caa(strict, "www.signed.test")
    with pytest.raises(ValidationFailure) as failure:
        await check_dns01(strict, "unsigned.test", KEY_AUTH)
    assert failure.value.to_data() == {
        "type": "dns",
        "detail": "DNS problem: DNSSEC: the answer is not signed (insecure zone) and ACME_RA_DNSSEC=require-signed "
        "looking up TXT for _acme-challenge.unsigned.test",
    }
    with pytest.raises(ValidationFailure) as no_caa:  # an unsigned "no CAA" proves nothing either
        await caa(strict, "unsigned-nocaa.test")
    assert no_caa.value.type == "dns" and "not signed" in no_caa.value.detail


async def test_a_resolver_that_does_not_validate_is_refused_and_lookups_fail_closed(lab: DnssecLab) -> None:
    names = resolver(lab, "validate", validating=False)
    refusal = await names.check_dnssec()
    assert refusal == (
        f"the DNS resolver 127.0.0.1:{lab.non_validating[1]} does not validate DNSSEC: no AD bit on the signed "
        "DNSKEY answer for test. (ACME_RA_DNSSEC=validate needs a validating resolver)"
    )
    assert REGISTRY.get_sample_value("acme_ra_validator_dnssec_resolvers_not_validating") == 1
    with pytest.raises(ValidationFailure) as failure:
        await check_dns01(names, "signed.test", KEY_AUTH)  # a good record, but nothing vouches for it
    assert failure.value.type == "dns" and "does not validate DNSSEC" in failure.value.detail


async def test_a_running_validator_notices_a_resolver_that_stops_validating(lab: DnssecLab) -> None:
    names = resolver(lab, "validate", validating=False)
    assert names.dnssec_refusal is None  # as after a good start-up check
    watch = asyncio.create_task(names.watch_dnssec(interval=0.1))
    try:
        for _ in range(300):
            if names.dnssec_refusal is not None:
                break
            await asyncio.sleep(0.1)
    finally:
        watch.cancel()
    assert names.dnssec_refusal is not None and "does not validate DNSSEC" in names.dnssec_refusal


async def test_a_resolver_validating_with_other_keys_is_refused(lab: DnssecLab, tmp_path: Path) -> None:
    other = DnssecLab(tmp_path / "other", {})  # another "test." KSK: its DS as our anchor
    try:
        names = resolver(lab, "validate", anchors=other.anchors_file)
        refusal = await names.probe_dnssec()
    finally:
        other.stop()
    assert refusal == (f"the DNS resolver 127.0.0.1:{lab.validating[1]} validates against other keys: "
                       f"no DNSKEY of test. matches {other.anchors_file}")


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    yield database
    await database.dispose()


async def test_jobs_signed_valid_bogus_invalid_unsigned_per_mode(db: Database, tmp_path: Path) -> None:
    """Real challenges through the worker: the same good TXT record, secure in one zone, bogus
    in another; in the unsigned zone valid under validate, invalid under require-signed."""
    good = await insert_pending_order(db, "signed.test", challenge_type="dns-01")
    bad = await insert_pending_order(db, "bogus.test", challenge_type="dns-01")
    unsigned = await insert_pending_order(db, "unsigned.test", challenge_type="dns-01")
    strict = await insert_pending_order(db, "unsigned.test", challenge_type="dns-01")
    zones = lab_zones()
    zones["signed"].records.append(f'_acme-challenge IN TXT "{txt_record_value(good.key_authorization)}"')
    zones["bogus"].records.append('_acme-challenge IN TXT "second-before-tampering"')
    zones["bogus"].tamper['"second-before-tampering"'] = f'"{txt_record_value(bad.key_authorization)}"'
    zones["unsigned"].records += [f'_acme-challenge IN TXT "{txt_record_value(rows.key_authorization)}"'
                                  for rows in (unsigned, strict)]
    job_lab = DnssecLab(tmp_path / "jobs", zones)
    try:
        options = ValidationOptions(ValidationPorts(80, 443), LAB_POLICY, (CA,), external_url="https://ra.example")
        async with new_http_client() as http:
            for mode, jobs in (("validate", (good, bad, unsigned)), ("require-signed", (strict,))):
                validator = ChallengeValidator(
                    db, http, resolver(job_lab, mode), options, authz_lifetime=dt.timedelta(days=1)
                )
                for rows in jobs:
                    job = bus.ValidateJob(challenge_id=rows.challenge_id)
                    await validator.handle(job, _Msg())  # type: ignore[arg-type]
    finally:
        job_lab.stop()
    for rows in (good, unsigned):
        valid = await snapshot(db, rows)
        assert valid["challenge"]["status"] == "valid", valid["challenge"]["error"]
    invalid, refused = await snapshot(db, bad), await snapshot(db, strict)
    assert invalid["challenge"]["status"] == "invalid"
    assert invalid["challenge"]["error"]["type"] == "dns"
    assert BOGUS_DETAIL in invalid["challenge"]["error"]["detail"]
    assert refused["challenge"]["status"] == "invalid"
    assert refused["challenge"]["error"]["type"] == "dns"
    assert "ACME_RA_DNSSEC=require-signed" in refused["challenge"]["error"]["detail"]


class _Msg:
    headers = None

    async def ack(self) -> None:
        pass


def _validator_env(tmp_path: Path, resolver_address: tuple[str, int], anchors: Path) -> dict[str, str]:
    return {
        **os.environ,
        "ACME_RA_NATS_URL": f"nats://127.0.0.1:{unused_port()}",  # nobody there: /readyz says so
        "ACME_RA_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/db.sqlite",
        "ACME_RA_VALIDATOR_LISTEN": f"127.0.0.1:{unused_port()}",
        "ACME_RA_STATE_DIR": str(tmp_path),
        "ACME_RA_DNS_RESOLVERS": f"{resolver_address[0]}:{resolver_address[1]}",
        "ACME_RA_DNSSEC": "validate",
        "ACME_RA_DNSSEC_TRUST_ANCHORS_FILE": str(anchors),
    }


def test_validator_refuses_to_start_on_a_resolver_that_does_not_validate(lab: DnssecLab, tmp_path: Path) -> None:
    env = _validator_env(tmp_path, lab.non_validating, lab.anchors_file)
    done = subprocess.run([sys.executable, "-m", "acme_ra_validator"], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 2
    line = (f"acme-ra: the DNS resolver 127.0.0.1:{lab.non_validating[1]} does not validate DNSSEC: no AD bit on "
            "the signed DNSKEY answer for test. (ACME_RA_DNSSEC=validate needs a validating resolver)")
    assert done.stderr.splitlines() == [line]


async def test_validator_starts_on_a_validating_resolver(lab: DnssecLab, tmp_path: Path) -> None:
    env = _validator_env(tmp_path, lab.validating, lab.anchors_file)
    log_path = tmp_path / "validator.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: ASYNC220 - returns at once; polled below
            [sys.executable, "-m", "acme_ra_validator"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        url = f"http://{env['ACME_RA_VALIDATOR_LISTEN']}"
        checks = None
        async with httpx.AsyncClient(trust_env=False) as client:
            for _ in range(600):
                assert process.poll() is None, log_path.read_text()
                try:
                    checks = (await client.get(url + "/readyz")).json()["checks"]
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            assert checks is not None, log_path.read_text()
            assert checks["dnssec"] == "ok"
            page = (await client.get(url + "/metrics")).text
            assert "acme_ra_validator_dnssec_resolvers_not_validating 0.0" in page
    finally:
        process.terminate()
        process.wait(30)


@pytest.mark.integration
async def test_validator_process_over_nats_signed_valid_bogus_invalid(database_url: str, tmp_path: Path) -> None:
    """``python -m acme_ra_validator`` with ACME_RA_DNSSEC=validate and CAA identities takes two
    dns-01 jobs from JetStream: the secure record passes (CAA too), the bogus one is refused."""
    db = Database(database_url)
    good = await insert_pending_order(db, "signed.test", challenge_type="dns-01")
    bad = await insert_pending_order(db, "bogus.test", challenge_type="dns-01")
    zones = lab_zones(f'"{txt_record_value(good.key_authorization)}"')
    zones["bogus"].records.append('_acme-challenge IN TXT "second-before-tampering"')
    zones["bogus"].tamper['"second-before-tampering"'] = f'"{txt_record_value(bad.key_authorization)}"'
    servers = DnssecLab(tmp_path / "dns", zones)
    log_path = tmp_path / "validator.log"
    try:
        with nats_server(tmp_path / "nats") as bus_server:
            env = {**_validator_env(tmp_path, servers.validating, servers.anchors_file),
                   "ACME_RA_NATS_URL": bus_server.url, "ACME_RA_DATABASE_URL": database_url,
                   "ACME_RA_CAA_IDENTITIES": CA}
            with log_path.open("wb") as log:
                process = subprocess.Popen(  # noqa: ASYNC220 - returns at once; the events are awaited
                    [sys.executable, "-m", "acme_ra_validator"], env=env, stdout=log, stderr=subprocess.STDOUT
                )
            nc = await nats.connect(bus_server.url)
            try:
                js = nc.jetstream()
                await bus.ensure_streams(js)
                events = await nc.subscribe("acme.events.validated")
                for rows in (good, bad):
                    job = bus.ValidateJob(challenge_id=rows.challenge_id, order_id=rows.order_id)
                    await bus.publish_job(js, bus.SUBJECT_VALIDATE, job, f"validate-{rows.challenge_id}")
                seen = {}
                for _ in range(2):
                    event = bus.Event.model_validate_json((await events.next_msg(timeout=60)).data)
                    seen[event.challenge_id] = event.status
                assert seen == {good.challenge_id: "valid", bad.challenge_id: "invalid"}, log_path.read_text()
            finally:
                await nc.close()
                process.terminate()
                process.wait(30)
        invalid = await snapshot(db, bad)
        assert invalid["challenge"]["error"]["type"] == "dns"
        assert BOGUS_DETAIL in invalid["challenge"]["error"]["detail"]
        assert (await snapshot(db, good))["order"]["status"] == "ready"
    finally:
        servers.stop()
        await db.dispose()


def test_dnssec_policy_off_reads_no_file() -> None:
    policy = DnssecPolicy.from_settings(SimpleNamespace(dnssec="off", dnssec_trust_anchors_file=Path("/nonexistent")))
    assert policy.mode is DnssecMode.OFF and not policy.enabled
