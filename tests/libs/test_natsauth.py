"""The client side of the bus's users (acme_ra.natsauth.connect_options, bus.connect): a service
connects with its ACME_RA_NATS_* settings, over TLS (a CA bundle, a client certificate) when the
server asks for it, and without credentials when none is set (a NATS without auth); bad
settings are one configuration error each."""

from __future__ import annotations

import datetime as dt
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import SecretStr, ValidationError

from acme_ra import bus, natsauth
from acme_ra.config import Settings
from acme_ra_tools.lab_tls import ensure_tls_material
from acme_ra_tools.supervisor import free_port, nats_server_binary
from tests.support.nats import NatsServer

pytestmark = pytest.mark.integration

START_TIMEOUT_SECONDS = 10


def client_certificate(tls_dir: Path) -> tuple[Path, Path]:
    """A client certificate (clientAuth) from the lab TLS CA of ``tls_dir``."""
    ca = x509.load_pem_x509_certificate((tls_dir / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((tls_dir / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "frontend")]))
        .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = tls_dir / "client.pem", tls_dir / "client.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def tls_nats(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """A nats-server with the bus's users, TLS required and client certificates verified (mutual
    TLS): its URL, its users' directory and the lab TLS directory."""
    material = ensure_tls_material(tmp_path / "tls", {"nats": ["localhost", "127.0.0.1"]})
    auth = tmp_path / "auth"
    passwords = natsauth.ensure_credentials(auth)
    config = auth / "nats-server.conf"
    config.write_text(natsauth.server_config(passwords, tls=natsauth.ServerTls(
        material.cert("nats"), material.key("nats"), client_ca=material.ca)))
    port = free_port()
    process = subprocess.Popen([nats_server_binary(), "-c", str(config), "-js", "-sd", str(tmp_path / "store"),
                                "-a", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline and process.poll() is None, "nats-server did not start"
                time.sleep(0.05)
        yield f"tls://localhost:{port}", auth, material.directory
    finally:
        process.terminate()
        process.wait(10)


async def test_a_service_connects_over_mutual_tls_with_its_user(tls_nats: tuple[str, Path, Path]) -> None:
    url, auth, tls_dir = tls_nats
    cert, key = client_certificate(tls_dir)
    settings = Settings(nats_url=url, nats_user="frontend", nats_password_file=auth / "frontend.password",
                        nats_tls_ca=tls_dir / "ca.pem", nats_tls_cert_file=cert, nats_tls_key_file=key)
    options = natsauth.connect_options(settings, "frontend")
    assert options["inbox_prefix"] == "_INBOX.frontend" and options["user"] == "frontend"
    nc = await bus.connect(url, "tls-test", options)
    try:
        assert nc.is_connected and nc.connected_url is not None and nc.connected_url.scheme == "tls"
        events = await nc.subscribe("acme.events.validated")
        inbox = nc.new_inbox()
        assert inbox.startswith("_INBOX.frontend.")
        await nc.subscribe(inbox)  # its own replies: allowed
        await nc.flush()
        assert events.pending_msgs == 0
    finally:
        await nc.close()


def test_settings_refuse_half_a_credential(tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text("secret\n")
    with pytest.raises(ValidationError, match="ACME_RA_NATS_USER and ACME_RA_NATS_PASSWORD"):
        Settings(nats_user="frontend")
    with pytest.raises(ValidationError, match="ACME_RA_NATS_USER and ACME_RA_NATS_PASSWORD"):
        Settings(nats_password_file=password)
    with pytest.raises(ValidationError, match="not both"):
        Settings(nats_user="frontend", nats_password=SecretStr("x"), nats_password_file=password)
    with pytest.raises(ValidationError, match="does not exist"):
        Settings(nats_user="frontend", nats_password_file=tmp_path / "missing")
    with pytest.raises(ValidationError, match="go together"):
        Settings(nats_tls_cert_file=password)
    assert natsauth.connect_options(Settings(nats_user="signer", nats_password_file=password), "signer")[
        "password"] == "secret"


async def test_without_credentials_a_nats_without_auth_still_serves(tmp_path: Path) -> None:
    """An operator's own NATS without auth: no credentials set, none sent, and the work goes on."""
    options = natsauth.connect_options(Settings(), "validator")
    assert options == {"inbox_prefix": "_INBOX.validator"}
    server = NatsServer(tmp_path / "store")
    try:
        nc = await bus.connect(server.url, "no-auth-test", options)
        try:
            js = nc.jetstream()
            await bus.wait_for_consumer(js, bus.DURABLE_VALIDATOR)  # no stream yet: made here
            info = await js.consumer_info(bus.JOBS_STREAM, bus.DURABLE_VALIDATOR)
            assert info.name == bus.DURABLE_VALIDATOR
        finally:
            await nc.close()
    finally:
        server.stop()
