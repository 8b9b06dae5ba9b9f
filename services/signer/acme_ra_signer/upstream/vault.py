"""The ``vault`` upstream: an OpenBao or HashiCorp Vault PKI secrets engine signs the client's CSR.

Configured in ``ACME_RA_CONFIG_FILE``::

    upstreams:
      campus-pki:
        type: vault
        url: https://bao.example.edu:8200
        mount: pki_int                       # the PKI mount
        role: acme-ra                        # <mount>/sign/<role> signs, <mount>/revoke revokes
        token_file: /run/secrets/bao-token   # or AppRole:
        # approle_role_id_file: /run/secrets/role-id
        # approle_secret_id_file: /run/secrets/secret-id
        ca_bundle: /etc/acme-ra/bao-ca.pem   # optional: roots for Vault's TLS

Vault has no order object: one POST signs. So the journal records, *before* the request, that
a sign request is being sent (state ``finalizing``, ``finalized_at``) and, after it, the serial
(state ``valid``, ``certificate_url`` = ``<mount>/cert/<serial>``). A request Vault answered with
an error, or that never reached it, signed nothing: the record goes back to ``creating`` and the
job is retried (5xx, 429, connection errors) or the order fails with Vault's text (4xx). A
request whose answer was lost (a read timeout, a signer that died while it was in flight) may
have signed: acme-ra never asks again for that order (that could issue a second certificate);
the order fails, naming the upstream and the time, and the log carries the key's fingerprint so
that the operator can find the certificate in Vault and revoke it. A record with a serial whose
certificate was not stored yet is finished by reading ``<mount>/cert/<serial>``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pydantic import BaseModel, ConfigDict

from acme_ra.config import Settings
from acme_ra.db.models import UpstreamOrderState, utcnow
from acme_ra_signer.upstream.acme_client import tls_context
from acme_ra_signer.upstream.base import (
    IssuedChain,
    IssueRequest,
    NamedUpstream,
    UpstreamRejected,
    UpstreamUnavailable,
    csr_and_refusal,
    refusal,
)
from acme_ra_signer.upstream.journal import Journal

log = logging.getLogger("acme_ra_signer.upstream.vault")

State = UpstreamOrderState
# A successful health check is trusted this long (seconds): probes must not hammer Vault.
CHECK_CACHE_SECONDS = 30.0
# An AppRole token is renewed once this share of its lease has passed.
RENEW_AT_FRACTION = 2 / 3
# Vault's answers to GET sys/health that mean "serving" (active, standby, performance/DR standby).
HEALTHY_STATUSES = (200, 429, 472, 473)


@dataclass(frozen=True)
class VaultConfig:
    """One ``type: vault`` upstream as configured (``origin`` names the file and key prefix)."""

    name: str
    url: str
    mount: str
    role: str
    origin: str
    token_file: Path | None = None
    approle_role_id_file: Path | None = None
    approle_secret_id_file: Path | None = None
    ca_bundle: Path | None = None

    type = "vault"

    def setting(self, name: str) -> str:
        return self.origin + name

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name, "type": self.type, "url": self.url, "mount": self.mount, "role": self.role,
            "auth": "token_file" if self.token_file else "approle", "authz_strategy": None, "dns_update": None,
        }

    def build(self, *, http_timeout: float, proxy: str | None) -> VaultUpstream:
        return VaultUpstream(self, http_timeout=http_timeout, proxy=proxy)


class _FileVault(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str
    mount: str
    role: str
    token_file: Path | None = None
    approle_role_id_file: Path | None = None
    approle_secret_id_file: Path | None = None
    ca_bundle: Path | None = None


def from_file(settings: Settings, name: str, fields: dict[str, Any], origin: str) -> VaultConfig:
    """``upstreams.<name>`` of ``type: vault``; raises ``UpstreamConfigError`` (one line)."""
    from acme_ra_signer.upstream.config_errors import PREFIX, UpstreamConfigError, read_secret, validated

    entry = validated(_FileVault, fields, origin)
    parts = urlsplit(entry.url.strip())
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.path.strip("/"):
        raise UpstreamConfigError(
            f"{PREFIX}{origin}url={entry.url!r}: expected Vault's address, e.g. https://bao.example.org:8200"
        )
    mount, role = entry.mount.strip().strip("/"), entry.role.strip().strip("/")
    for key, value in (("mount", mount), ("role", role)):
        if not value or any(c.isspace() or c in "?#" for c in value) or (key == "role" and "/" in value):
            raise UpstreamConfigError(f"{PREFIX}{origin}{key}={value!r}: expected a PKI {key} name")
    approle = (entry.approle_role_id_file, entry.approle_secret_id_file)
    if entry.token_file is not None and any(approle):
        raise UpstreamConfigError(
            f"{PREFIX}{origin}token_file: either token_file or approle_role_id_file + approle_secret_id_file, not both"
        )
    if entry.token_file is None and not all(approle):
        missing = "approle_secret_id_file" if entry.approle_role_id_file else "approle_role_id_file"
        if not any(approle):
            missing = "token_file"
        raise UpstreamConfigError(
            f"{PREFIX}{origin}{missing}: required (Vault auth: token_file, or approle_role_id_file "
            "+ approle_secret_id_file)"
        )
    for key in ("token_file", "approle_role_id_file", "approle_secret_id_file"):
        path = getattr(entry, key)
        if path is not None and not read_secret(path, origin + key).get_secret_value():
            raise UpstreamConfigError(f"{PREFIX}{origin}{key}: {path} is empty")
    if entry.ca_bundle is not None and not entry.ca_bundle.is_file():
        raise UpstreamConfigError(f"{PREFIX}{origin}ca_bundle: {entry.ca_bundle} does not exist")
    return VaultConfig(
        name=name, url=entry.url.strip().rstrip("/"), mount=mount, role=role, origin=origin,
        token_file=entry.token_file, approle_role_id_file=entry.approle_role_id_file,
        approle_secret_id_file=entry.approle_secret_id_file, ca_bundle=entry.ca_bundle,
    )


class VaultError(Exception):
    """Vault answered with an HTTP error; ``errors`` is its ``errors`` list, joined."""

    def __init__(self, status: int, errors: str) -> None:
        super().__init__(f"HTTP {status}: {errors}")
        self.status = status
        self.errors = errors


class VaultUpstream(NamedUpstream):
    """Signs with ``<mount>/sign/<role>``, revokes with ``<mount>/revoke``."""

    type = "vault"

    def __init__(self, config: VaultConfig, *, http_timeout: float = 60.0, proxy: str | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self.name = config.name
        self.client = httpx.AsyncClient(
            base_url=config.url + "/v1/",
            verify=tls_context(str(config.ca_bundle) if config.ca_bundle else None),
            timeout=http_timeout,
            proxy=proxy,
            transport=transport,
            trust_env=False,
        )
        self._token: str | None = None
        self._token_lease: float = 0.0  # seconds; 0 = does not expire
        self._token_at: float = 0.0  # monotonic time of login or renewal
        self._renewable = False
        self._checked_at = -1e9

    def describe(self) -> dict[str, Any]:
        return self.config.describe()

    # Authentication ---------------------------------------------------------------------------

    async def _auth(self) -> str:
        """A usable token: the token file's, or an AppRole token (renewed, or logged in anew)."""
        due = self._token_lease and time.monotonic() - self._token_at > self._token_lease * RENEW_AT_FRACTION
        if self._token is not None and due and not (self._renewable and await self._renew()):
            self._token = None
        if self._token is None:
            await self._login()
        assert self._token is not None
        return self._token

    async def _login(self) -> None:
        config = self.config
        if config.token_file is not None:
            self._token = _read(config.token_file, config.setting("token_file"))
            self._token_lease = 0.0
            return
        assert config.approle_role_id_file is not None and config.approle_secret_id_file is not None
        body = {
            "role_id": _read(config.approle_role_id_file, config.setting("approle_role_id_file")),
            "secret_id": _read(config.approle_secret_id_file, config.setting("approle_secret_id_file")),
        }
        try:
            answer = await self._send("POST", "auth/approle/login", body, token=None)
        except VaultError as error:
            raise UpstreamUnavailable(f"upstream {self.name}: AppRole login refused: {error}") from None
        self._take(answer)
        log.info("vault: logged in with AppRole", extra={"upstream": self.name, "lease_seconds": self._token_lease})

    async def _renew(self) -> bool:
        try:
            answer = await self._send("POST", "auth/token/renew-self", {}, token=self._token)
        except VaultError:
            return False
        self._take(answer)
        return True

    def _take(self, answer: dict[str, Any]) -> None:
        auth = answer.get("auth") or {}
        token = auth.get("client_token")
        if not isinstance(token, str) or not token:
            raise UpstreamUnavailable(f"upstream {self.name}: Vault's login answer holds no token")
        self._token = token
        self._token_lease = float(auth.get("lease_duration") or 0)
        self._renewable = bool(auth.get("renewable"))
        self._token_at = time.monotonic()

    # Requests ---------------------------------------------------------------------------------

    async def _send(self, method: str, path: str, body: dict[str, Any] | None, token: str | None) -> dict[str, Any]:
        """One request; Vault's errors as ``VaultError``, transport failures as httpx errors."""
        headers = {"X-Vault-Token": token} if token else {}
        response = await self.client.request(method, path, json=body, headers=headers)
        try:
            answer = response.json() if response.content else {}
        except ValueError:
            answer = {}
        if response.status_code >= 400:
            errors = answer.get("errors") if isinstance(answer, dict) else None
            text = "; ".join(str(e) for e in errors if e) if isinstance(errors, list) else ""
            raise VaultError(response.status_code, text or response.reason_phrase or "error")
        return answer if isinstance(answer, dict) else {}

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """An authenticated request; on 403 (token expired or revoked) log in again, once."""
        token = await self._auth()
        try:
            return await self._send(method, path, body, token)
        except VaultError as error:
            if error.status != 403:
                raise
        self._token = None
        return await self._send(method, path, body, await self._auth())

    # Issuance ---------------------------------------------------------------------------------

    async def issue(self, request: IssueRequest, journal: Journal) -> IssuedChain:
        entry = journal.entry
        if entry.state == State.valid.value:
            return await self._recover(journal, x509.load_der_x509_csr(request.csr_der))
        csr = csr_and_refusal(request, entry)
        if entry.state == State.finalizing.value:
            await self._unknown_outcome(journal, csr, "the signer stopped while the request was in flight")
        try:
            await self._auth()  # before anything is recorded: a refused login signs nothing
        except httpx.TransportError as error:
            raise self._unavailable(error) from None
        path = f"{self.config.mount}/sign/{self.config.role}"
        # Recorded before it is sent: from here on an answer that is lost is never asked again.
        await journal.save(
            state=State.finalizing.value, url=self.config.url + "/v1/" + path,
            finalized_at=utcnow(), orders_created=entry.orders_created + 1,
        )
        try:
            answer = await self._call("POST", path, _sign_body(request, csr))
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as error:
            await journal.save(state=State.creating.value, finalized_at=None)  # never reached Vault
            raise self._unavailable(error) from None
        except httpx.TransportError as error:
            await self._unknown_outcome(journal, csr, f"{type(error).__name__} {error}".strip())
        except VaultError as error:
            if error.status >= 500 or error.status in (403, 429):
                await journal.save(state=State.creating.value, finalized_at=None)  # Vault signed nothing
                raise UpstreamUnavailable(f"upstream {self.name}: sign: {error}") from None
            problem = refusal(self.name, error.errors, request.identifiers)
            await journal.finish(state=State.invalid.value, error=problem)
            raise UpstreamRejected(problem) from None
        data = answer.get("data") or {}
        serial = str(data.get("serial_number") or "")
        await journal.finish(state=State.valid.value, certificate_url=self._cert_url(serial))
        if answer.get("warnings"):
            log.info("vault: signed with warnings: %s", "; ".join(map(str, answer["warnings"])),
                     extra={"upstream": self.name, "order_id": request.order_id})
        issuers = data.get("ca_chain") or ([data["issuing_ca"]] if data.get("issuing_ca") else [])
        return self._chain(str(data.get("certificate") or ""), [str(c) for c in issuers], csr)

    async def _unknown_outcome(self, journal: Journal, csr: x509.CertificateSigningRequest, why: str) -> NoReturn:
        sent = journal.entry.finalized_at
        fingerprint = hashlib.sha256(
            csr.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        ).hexdigest()
        log.error(
            "vault: the answer to a sign request was lost; not asking again (look for a certificate of this "
            "key in Vault and revoke it)",
            extra={"upstream": self.name, "sent_at": sent.isoformat() if sent else None, "why": why,
                   "public_key_sha256": fingerprint},
        )
        problem = {
            "type": "serverInternal",
            "detail": f"upstream \"{self.name}\": may have signed this order's CSR, but its answer was lost "
            f"({why}); acme-ra does not ask again, as that could issue a second certificate: order again",
        }
        await journal.finish(state=State.invalid.value, error=problem)
        raise UpstreamRejected(problem)

    async def _recover(self, journal: Journal, csr: x509.CertificateSigningRequest) -> IssuedChain:
        """The serial was recorded but the certificate not stored: read it back from Vault."""
        url = journal.entry.certificate_url or ""
        path = url.removeprefix(self.config.url + "/v1/")
        try:
            data = (await self._send("GET", path, None, None)).get("data") or {}
            issuer_id = data.get("issuer_id")
            issuer_path = f"{self.config.mount}/issuer/{issuer_id}/json" if issuer_id else f"{self.config.mount}/cert/ca_chain"
            issuer = (await self._send("GET", issuer_path, None, None)).get("data") or {}
        except httpx.TransportError as error:
            raise self._unavailable(error) from None
        except VaultError as error:
            if error.status >= 500:
                raise UpstreamUnavailable(f"upstream {self.name}: {path}: {error}") from None
            raise UpstreamRejected({
                "type": "serverInternal",
                "detail": f"upstream \"{self.name}\": signed this order but no longer returns {path}: {error.errors}",
            }) from None
        chain = issuer.get("ca_chain") or issuer.get("certificate") or []
        issuers = chain if isinstance(chain, list) else [chain]
        log.info("vault: certificate read back after a restart", extra={"upstream": self.name, "url": url})
        return self._chain(str(data.get("certificate") or ""), [str(c) for c in issuers], csr)

    def _chain(self, leaf_pem: str, issuers_pem: list[str], csr: x509.CertificateSigningRequest) -> IssuedChain:
        try:
            certs = x509.load_pem_x509_certificates((leaf_pem + "\n" + "\n".join(issuers_pem)).encode())
        except ValueError:
            certs = []
        if not certs:
            raise UpstreamRejected({
                "type": "serverInternal", "detail": f"upstream \"{self.name}\": answered without a certificate",
            })
        chain: list[x509.Certificate] = []
        for cert in certs:
            if cert not in chain:
                chain.append(cert)
        leaf = chain[0]
        if leaf.public_key() != csr.public_key():
            raise UpstreamRejected({
                "type": "serverInternal",
                "detail": f"upstream \"{self.name}\": returned a certificate for another key",
            })
        return IssuedChain(
            chain_pem="".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in chain),
            serial_hex=format(leaf.serial_number, "x"),
            not_before=leaf.not_valid_before_utc,
            not_after=leaf.not_valid_after_utc,
        )

    def _cert_url(self, serial: str) -> str:
        return f"{self.config.url}/v1/{self.config.mount}/cert/{serial}"

    def _unavailable(self, error: Exception) -> UpstreamUnavailable:
        self._checked_at = -1e9
        return UpstreamUnavailable(f"upstream {self.name}: {type(error).__name__}: {error}".rstrip(": "))

    # Revocation and health ----------------------------------------------------------------------

    async def revoke(self, cert_der: bytes, reason: int) -> None:
        try:
            cert = x509.load_der_x509_certificate(cert_der)
        except ValueError:
            raise UpstreamRejected({"type": "malformed", "detail": "not a DER certificate"}) from None
        serial = vault_serial(cert.serial_number)
        try:
            await self._call("POST", f"{self.config.mount}/revoke", {"serial_number": serial})
        except httpx.TransportError as error:
            raise self._unavailable(error) from None
        except VaultError as error:
            if error.status >= 500 or error.status in (403, 429):
                raise UpstreamUnavailable(f"upstream {self.name}: revoke: {error}") from None
            raise UpstreamRejected({
                "type": "serverInternal", "detail": f"upstream \"{self.name}\": refused: {error.errors}",
            }) from None
        # Vault's revocation has no reason code: it is kept in acme-ra's database (and this log).
        log.info("certificate revoked upstream", extra={"upstream": self.name, "serial": serial, "reason": reason})

    async def check(self) -> None:
        """Vault is unsealed and serving, and acme-ra can authenticate (cached when good)."""
        if time.monotonic() - self._checked_at < CHECK_CACHE_SECONDS:
            return
        try:
            response = await self.client.get("sys/health")
            if response.status_code not in HEALTHY_STATUSES:
                sealed = "sealed" if response.status_code == 503 else f"HTTP {response.status_code}"
                raise UpstreamUnavailable(f"upstream {self.name}: Vault is not serving ({sealed})")
            await self._call("GET", "auth/token/lookup-self")
        except httpx.TransportError as error:
            raise self._unavailable(error) from None
        except VaultError as error:
            raise UpstreamUnavailable(f"upstream {self.name}: token lookup: {error}") from None
        self._checked_at = time.monotonic()

    async def close(self) -> None:
        await self.client.aclose()


def vault_serial(serial: int) -> str:
    """A serial as Vault writes it: lowercase hex bytes joined by colons (``1a:2b:...``)."""
    raw = serial.to_bytes(max(1, (serial.bit_length() + 7) // 8), "big")
    return ":".join(f"{byte:02x}" for byte in raw)


def _sign_body(request: IssueRequest, csr: x509.CertificateSigningRequest) -> dict[str, Any]:
    """The sign request: the CSR and, explicitly, the order's names (a role with
    ``use_csr_sans`` and ``use_csr_common_name`` takes the same names from the CSR)."""
    dns = [i["value"] for i in request.identifiers if i.get("type") == "dns"]
    ips = [i["value"] for i in request.identifiers if i.get("type") == "ip"]
    body: dict[str, Any] = {
        "csr": csr.public_bytes(serialization.Encoding.PEM).decode(),
        "common_name": (dns or ips)[0] if (dns or ips) else "",
        "format": "pem",
    }
    if dns:
        body["alt_names"] = ",".join(dns)
    if ips:
        body["ip_sans"] = ",".join(ips)
    if request.not_after is not None:
        body["not_after"] = request.not_after.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return body


def _read(path: Path, name: str) -> str:
    try:
        value = path.read_text().strip()
    except OSError as error:
        raise UpstreamUnavailable(f"{name}: cannot read {path}: {error.strerror}") from None
    if not value:
        raise UpstreamUnavailable(f"{name}: {path} is empty")
    return value

