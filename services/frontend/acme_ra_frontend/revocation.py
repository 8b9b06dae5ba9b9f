"""revokeCert (RFC 8555 §7.6): the frontend authorises, the signer revokes upstream.

Authorised: the account that owns the certificate, an account holding valid authorizations for
every name in it, or the holder of the certificate's private key (JWS signed with that key).
The upstream call happens after the request's transaction has committed, over a NATS request
to the signer, so no database lock is held while the upstream answers.
"""

from __future__ import annotations

import ipaddress

import nats.errors
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from fastapi.responses import Response

from acme_ra import bus
from acme_ra.db.models import utcnow
from acme_ra.protocol.jws import b64url_decode, raw_key
from acme_ra.protocol.problems import Problem, malformed, server_internal, unauthorized
from acme_ra_frontend.context import AcmeCall
from acme_ra_frontend.repo import authz as repo_authz
from acme_ra_frontend.repo import certificates as repo_certificates

# RFC 5280 reason codes a subscriber may ask for (Boulder's set: unspecified, keyCompromise,
# affiliationChanged, superseded, cessationOfOperation).
ALLOWED_REASONS = (0, 1, 3, 4, 5)


def certificate_names(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set(), set()
    dns = {name.lower() for name in san.get_values_for_type(x509.DNSName)}
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    return dns, ips


async def holds_authorizations(call: AcmeCall, cert: x509.Certificate) -> bool:
    dns, ips = certificate_names(cert)
    wanted = {("dns", name.removeprefix("*."), name.startswith("*.")) for name in dns}
    wanted |= {("ip", str(ipaddress.ip_address(ip)), False) for ip in ips}
    if not wanted:
        return False
    account = call.require_account()
    held = await repo_authz.held_identifiers(call.session, account.id, [v for _, v, _ in wanted], utcnow())
    return wanted <= held


async def revoke_cert(call: AcmeCall) -> Response:
    payload = call.payload()
    der = b64url_decode(payload.get("certificate"), "certificate")
    reason = payload.get("reason", 0)
    if not isinstance(reason, int) or isinstance(reason, bool) or reason not in ALLOWED_REASONS:
        raise Problem(
            "badRevocationReason",
            f"reason {reason!r} is not allowed; allowed reason codes: {', '.join(map(str, ALLOWED_REASONS))}",
        )
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        raise malformed("certificate is not a DER-encoded X.509 certificate") from None
    serial = format(cert.serial_number, "x")
    stored = None
    for row in await repo_certificates.by_serial(call.session, serial):
        leaf = x509.load_pem_x509_certificate(row.chain_pem.encode())
        if leaf.public_bytes(Encoding.DER) == der:
            stored = row
            break
    if stored is None:
        raise Problem("malformed", "this certificate was not issued through this server", 404)
    if call.account is None:  # signed with a jwk: must be the certificate's own key
        if raw_key(call.jwk) != cert.public_key():
            raise unauthorized("the JWS key is not the certificate's key")
    elif stored.account_id != call.account.id and not await holds_authorizations(call, cert):
        raise unauthorized("this account neither owns the certificate nor holds authorizations for all its names")
    if stored.revoked_at is not None:
        raise Problem("alreadyRevoked", "the certificate is already revoked")
    call.respond_after_commit(lambda: ask_signer(call, stored.id, reason))
    return Response(status_code=200)


async def ask_signer(call: AcmeCall, certificate_id: str, reason: int) -> Response:
    request = bus.RevokeRequest(certificate_id=certificate_id, reason=reason)
    try:
        message = await call.state.nc.request(
            bus.SUBJECT_REVOKE_RPC, request.model_dump_json().encode(), timeout=bus.REVOKE_RPC_TIMEOUT_SECONDS
        )
        reply = bus.RevokeReply.model_validate_json(message.data)
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.errors.ConnectionClosedError):
        raise unavailable() from None
    if reply.outcome == "revoked":
        return Response(status_code=200)
    if reply.outcome == "already_revoked":
        raise Problem("alreadyRevoked", "the certificate is already revoked")
    if reply.outcome == "rejected" and reply.problem:
        problem = reply.problem
        type_ = problem.get("type", "serverInternal")
        try:
            return_problem = Problem(type_, problem.get("detail", "the upstream CA refused the revocation"))
        except ValueError:
            return_problem = Problem("serverInternal", "the upstream CA refused the revocation")
        raise return_problem
    raise unavailable()


def unavailable() -> Problem:
    problem = server_internal("the upstream CA cannot be reached now; try again later")
    problem.status = 503
    return problem
