"""The frontend picks up a renewed TLS certificate from its files without a restart."""

from __future__ import annotations

import datetime as dt
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from acme_ra_frontend.tls_reload import TlsWatch


def write_pair(directory: Path, name: str) -> tuple[Path, Path, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "frontend.crt", directory / "frontend.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path, cert


def test_changed_files_are_loaded_into_the_live_context(tmp_path: Path) -> None:
    cert_path, key_path, _ = write_pair(tmp_path, "old.test")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    watch = TlsWatch(context, cert_path, key_path)
    assert not watch.reload_if_changed()
    write_pair(tmp_path, "new.test")
    later = watch.seen[0] + 5
    os.utime(cert_path, (later, later))
    os.utime(key_path, (later, later))
    assert watch.reload_if_changed()
    assert not watch.reload_if_changed()


async def test_new_handshakes_get_the_renewed_certificate(tmp_path: Path) -> None:
    import asyncio

    cert_path, key_path, _ = write_pair(tmp_path, "old.test")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    watch = TlsWatch(context, cert_path, key_path)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE

    async def served_name() -> str:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        await writer.wait_closed()
        cert = x509.load_der_x509_certificate(der)
        return str(cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)

    try:
        assert await served_name() == "old.test"
        write_pair(tmp_path, "new.test")
        later = watch.seen[0] + 5
        os.utime(cert_path, (later, later))
        os.utime(key_path, (later, later))
        assert watch.reload_if_changed()
        assert await served_name() == "new.test"
    finally:
        server.close()
        await server.wait_closed()
