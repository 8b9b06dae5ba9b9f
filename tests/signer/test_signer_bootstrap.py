"""``python -m acme_ra_signer bootstrap``: CA bundle and the frontend's TLS certificate."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from acme_ra.config import Settings
from acme_ra_signer import bootstrap, labca

from .conftest import EXTERNAL_HOST, verify_chain


def frontend_leaf(settings: Settings) -> x509.Certificate:
    return x509.load_pem_x509_certificates(settings.frontend_tls_paths[0].read_bytes())[0]


def san_values(cert: x509.Certificate) -> set[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(name) for name in san.get_values_for_type(x509.DNSName)} | {
        str(address) for address in san.get_values_for_type(x509.IPAddress)
    }


def test_writes_ca_bundle_and_a_frontend_certificate_that_verifies(settings: Settings) -> None:
    result = bootstrap.run(settings)

    assert result.lab_ca_created and result.frontend_cert == "issued"
    bundle = (settings.state_dir / "ca-bundle.pem").read_bytes()
    assert bundle == (settings.lab_ca_dir / "root.pem").read_bytes()
    [root] = x509.load_pem_x509_certificates(bundle)
    cert_path, key_path = settings.frontend_tls_paths
    chain = cert_path.read_bytes()
    assert chain.count(b"-----BEGIN CERTIFICATE-----") == 2
    for name in (EXTERNAL_HOST, "localhost", "127.0.0.1", "::1"):
        verify_chain(chain, root, name)
    assert {EXTERNAL_HOST, "localhost", "127.0.0.1", "::1"} <= san_values(frontend_leaf(settings))
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert key.public_key() == frontend_leaf(settings).public_key()


def test_second_run_keeps_the_certificate(settings: Settings) -> None:
    bootstrap.run(settings)
    before = settings.frontend_tls_paths[0].read_bytes()

    result = bootstrap.run(settings)

    assert result.frontend_cert == "kept" and not result.lab_ca_created
    assert settings.frontend_tls_paths[0].read_bytes() == before


def test_a_new_external_host_reissues(settings: Settings) -> None:
    bootstrap.run(settings)
    moved = settings.model_copy(update={"external_url": "https://[2001:db8::1]:443"})

    result = bootstrap.run(moved)

    assert result.frontend_cert == "issued"
    assert "2001:db8::1" in san_values(frontend_leaf(moved))
    root = x509.load_pem_x509_certificate((settings.state_dir / "ca-bundle.pem").read_bytes())
    verify_chain(moved.frontend_tls_paths[0].read_bytes(), root, "2001:db8::1")


def test_reissues_in_the_last_third_of_its_life(settings: Settings) -> None:
    bootstrap.run(settings)
    leaf = frontend_leaf(settings)
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    ca, _ = labca.load_or_create(settings.lab_ca_dir)
    cert_path, key_path = settings.frontend_tls_paths
    names = bootstrap.frontend_names(settings.external_url)

    early = leaf.not_valid_after_utc - lifetime / 3 - dt.timedelta(hours=1)
    assert bootstrap.ensure_frontend_cert(ca, cert_path, key_path, names, early) == "kept"
    late = leaf.not_valid_after_utc - lifetime / 3 + dt.timedelta(hours=1)
    assert bootstrap.ensure_frontend_cert(ca, cert_path, key_path, names, late) == "issued"
    assert frontend_leaf(settings).serial_number != leaf.serial_number


def test_a_recreated_lab_ca_reissues_the_frontend_certificate(settings: Settings) -> None:
    bootstrap.run(settings)
    shutil.rmtree(settings.lab_ca_dir)

    result = bootstrap.run(settings)

    assert result.lab_ca_created and result.frontend_cert == "issued"
    root = x509.load_pem_x509_certificate((settings.state_dir / "ca-bundle.pem").read_bytes())
    verify_chain(settings.frontend_tls_paths[0].read_bytes(), root, EXTERNAL_HOST)


def test_a_configured_tls_certificate_is_left_alone(settings: Settings, tmp_path: Path) -> None:
    cert, key = tmp_path / "own.crt", tmp_path / "own.key"
    cert.write_text("mine")
    key.write_text("mine")
    configured = settings.model_copy(update={"tls_cert_file": cert, "tls_key_file": key})

    result = bootstrap.run(configured)

    assert result.frontend_cert == "configured"
    assert cert.read_text() == "mine" and key.read_text() == "mine"
    assert not (settings.state_dir / "tls").exists()
    assert (settings.state_dir / "ca-bundle.pem").is_file()


def test_frontend_names() -> None:
    assert bootstrap.frontend_names("https://ACME.example.org") == [
        "acme.example.org",
        "localhost",
        "127.0.0.1",
        "::1",
    ]
    assert bootstrap.frontend_names("https://localhost:8443") == ["localhost", "127.0.0.1", "::1"]
    assert ipaddress.ip_address(bootstrap.frontend_names("https://[::1]:8443")[0])


def clean_env(**values: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("ACME_RA_")}
    env.update(values)
    return env


def test_command_line_bootstrap_logs_one_line(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = clean_env(ACME_RA_STATE_DIR=str(state), ACME_RA_EXTERNAL_URL="https://acme.cli.test")

    done = subprocess.run(
        [sys.executable, "-m", "acme_ra_signer", "bootstrap"], env=env, capture_output=True, text=True, timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert json.loads(line)["level"] == "info"
    assert (state / "ca-bundle.pem").is_file() and (state / "tls" / "frontend.crt").is_file()


def test_the_service_needs_a_nats_url(tmp_path: Path) -> None:
    env = clean_env(ACME_RA_STATE_DIR=str(tmp_path))

    done = subprocess.run(
        [sys.executable, "-m", "acme_ra_signer"], env=env, capture_output=True, text=True, timeout=60, check=False
    )

    assert done.returncode == 2
    assert done.stderr.strip() == (
        "acme-ra: invalid configuration: ACME_RA_NATS_URL: required for the signer "
        "(make dev starts an embedded nats-server)"
    )
    assert not (tmp_path / "lab-ca").exists()


def test_unknown_arguments_print_usage() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "acme_ra_signer", "sign-everything"],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60, check=False,
    )
    assert done.returncode == 2 and "usage" in done.stderr
