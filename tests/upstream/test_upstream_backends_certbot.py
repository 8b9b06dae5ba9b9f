"""The whole of acme-ra (frontend, validator, signer on NATS) with the upstreams of docs/upstream.md's
"OpenBao / Vault PKI and external-command upstreams": a real OpenBao (token file and AppRole) and
a script around a real ``openssl ca``, one per ACME profile. certbot gets a certificate through
each and revokes it, and the CA's own record shows it revoked; a refusal by either CA reaches
certbot in the CA's words, and a command that hangs fails the order once its timeout is up.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from acme_ra_signer.upstream.vault import vault_serial
from tests.support.certbot import CertbotRun, certonly, dns_names, revoke
from tests.support.dns_server import TestDnsServer
from tests.support.lab import TEST_ZONE, Lab, running_tls_lab
from tests.support.openssl_ca import ISSUE, REVOKE, OpensslCa

from .openbao import MOUNT, ROLE, OpenBao

SECRET = "backends-certbot-tests-sealing-secret-0"
VAULT_ZONE = f"vault.{TEST_ZONE}"  # the names the OpenBao role signs
COMMAND_ZONE = f"cmd.{TEST_ZONE}"  # the names the openssl ca script signs
COMMAND_TIMEOUT_SECONDS = 3


@dataclass
class BackendsLab:
    lab: Lab
    bao: OpenBao
    ca: OpensslCa
    trust: Path


@pytest.fixture(scope="module")
def backends_lab(test_dns: TestDnsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackendsLab]:
    workdir = tmp_path_factory.mktemp("backends")
    bao = OpenBao(workdir / "openbao", [VAULT_ZONE])
    try:
        ca = OpensslCa(workdir / "openssl-ca", COMMAND_ZONE)
        role_id, secret_id = bao.approle(workdir / "approle")
        config = workdir / "acme-ra.yaml"
        config.write_text(yaml.safe_dump({
            "upstreams": {
                "bao-token": {"type": "vault", "url": bao.url, "mount": MOUNT, "role": ROLE,
                              "token_file": str(bao.token_file(workdir / "bao-token"))},
                "bao-approle": {"type": "vault", "url": bao.url, "mount": MOUNT, "role": ROLE,
                                "approle_role_id_file": str(role_id), "approle_secret_id_file": str(secret_id)},
                "openssl": {"type": "command", "issue": str(ISSUE), "revoke": str(REVOKE),
                            "timeout_seconds": COMMAND_TIMEOUT_SECONDS},
            },
            "default_upstream": "bao-token",
            "profiles": {"approle": {"upstream": "bao-approle"}, "openssl": {"upstream": "openssl"}},
        }))
        with running_tls_lab(workdir, test_dns, {
            "ACME_RA_UPSTREAM": "acme",
            "ACME_RA_CONFIG_FILE": str(config),
            "ACME_RA_SECRET_KEY": SECRET,
            "ACME_RA_PROFILES": "tlsserver=OpenBao (token),approle=OpenBao (AppRole),openssl=openssl ca",
            **ca.environment,  # the signer's environment reaches the command
        }) as (lab, trust):
            yield BackendsLab(lab, bao, ca, trust)
    finally:
        bao.stop()


def get(lab: BackendsLab, names: list[str], profile: str, workdir: Path) -> CertbotRun:
    return certonly(lab.lab, names, "dns-01", workdir, trust=lab.trust, extra_args=["--required-profile", profile])


@pytest.mark.parametrize("profile", ["tlsserver", "approle"], ids=["token-file", "approle"])
def test_certbot_gets_a_certificate_from_openbao_and_revokes_it(
    backends_lab: BackendsLab, tmp_path: Path, profile: str
) -> None:
    names = [f"{profile}.{VAULT_ZONE}", f"www.{profile}.{VAULT_ZONE}"]
    before = set(backends_lab.bao.issued())
    run = get(backends_lab, names, profile, tmp_path)
    assert run.returncode == 0, run.describe() + "\n" + backends_lab.lab.logs()[-6000:]
    leaf = run.chain()[0]
    assert dns_names(leaf) == set(names)
    leaf.verify_directly_issued_by(backends_lab.bao.root)
    serial = vault_serial(leaf.serial_number)
    assert set(backends_lab.bao.issued()) - before == {serial}
    assert int(backends_lab.bao.cert(serial)["revocation_time"]) == 0

    revoked = revoke(backends_lab.lab, run, tmp_path / "revoke", trust=backends_lab.trust)
    assert revoked.returncode == 0, revoked.describe()
    assert int(backends_lab.bao.cert(serial)["revocation_time"]) > 0  # OpenBao's own record


def test_certbot_gets_a_certificate_through_the_openssl_ca_command_and_revokes_it(
    backends_lab: BackendsLab, tmp_path: Path
) -> None:
    names = [f"www.{COMMAND_ZONE}"]
    run = get(backends_lab, names, "openssl", tmp_path)
    assert run.returncode == 0, run.describe() + "\n" + backends_lab.lab.logs()[-6000:]
    leaf = run.chain()[0]
    assert dns_names(leaf) == set(names)
    leaf.verify_directly_issued_by(backends_lab.ca.root)
    serial = format(leaf.serial_number, "x")
    assert backends_lab.ca.index()[serial] == "V"

    revoked = revoke(backends_lab.lab, run, tmp_path / "revoke", trust=backends_lab.trust)
    assert revoked.returncode == 0, revoked.describe()
    assert backends_lab.ca.index()[serial] == "R"  # openssl ca's own database


def test_a_name_the_vault_role_denies_reaches_certbot_in_vaults_words(
    backends_lab: BackendsLab, tmp_path: Path
) -> None:
    before = backends_lab.bao.issued()
    run = get(backends_lab, [f"denied.{TEST_ZONE}"], "tlsserver", tmp_path)
    assert run.returncode != 0
    assert f'upstream "bao-token": refused: common name denied.{TEST_ZONE} not allowed by this role' in run.output, (
        run.describe()
    )
    assert backends_lab.bao.issued() == before


def test_a_command_refusal_reaches_certbot_in_the_commands_words(backends_lab: BackendsLab, tmp_path: Path) -> None:
    run = get(backends_lab, [f"refused.{TEST_ZONE}"], "openssl", tmp_path)
    assert run.returncode != 0
    assert (
        f'upstream "openssl": refused: openssl-ca policy: refused.{TEST_ZONE} is outside {COMMAND_ZONE}'
        in run.output
    ), run.describe()


def test_a_command_that_hangs_fails_the_order_at_its_timeout(backends_lab: BackendsLab, tmp_path: Path) -> None:
    signed = backends_lab.ca.index()
    run = get(backends_lab, [f"slow.{COMMAND_ZONE}"], "openssl", tmp_path)
    assert run.returncode != 0
    assert f"did not finish within {COMMAND_TIMEOUT_SECONDS}s" in run.output, run.describe()
    assert "does not run the command again" in run.output, run.describe()
    assert backends_lab.ca.index() == signed


def test_the_signer_describes_each_upstream_with_its_type_and_no_secret(backends_lab: BackendsLab) -> None:
    signer = f"http://127.0.0.1:{backends_lab.lab.ports.signer}"
    response = httpx.get(f"{signer}/upstreams", timeout=10)
    described = response.json()["upstreams"]
    assert {u["name"]: (u["type"], u.get("auth")) for u in described} == {
        "bao-token": ("vault", "token_file"), "bao-approle": ("vault", "approle"), "openssl": ("command", None),
    }
    token = (backends_lab.bao.workdir.parent / "bao-token").read_text().strip()
    secret_id = (backends_lab.bao.workdir.parent / "approle" / "secret-id").read_text().strip()
    assert token not in response.text and secret_id not in response.text
