"""Verification of ACME request bodies: flattened JWS (RFC 7515, RFC 8555 §6.2) with josepy.

``parse_jws`` checks the envelope and the protected header without any I/O; the caller then
finds the key (``jwk`` or the account behind ``kid``), calls ``verify_signature`` and only then
redeems the nonce, so that a request with a bad signature never burns a valid nonce.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

import josepy
import orjson
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from acme_ra.protocol.problems import Problem, malformed

# Signature algorithms accepted on the outer JWS, and the key each needs.
ALLOWED_ALGORITHMS: dict[str, josepy.JWASignature] = {
    "RS256": josepy.RS256,
    "ES256": josepy.ES256,
    "ES384": josepy.ES384,
    "ES512": josepy.ES512,
}
_CURVE_FOR_ALG = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
# Smallest RSA modulus accepted for account keys (and CSR keys).
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192
MAX_HEADER_LENGTH = 8192

_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")


def b64url_decode(value: Any, what: str) -> bytes:
    """Strict base64url without padding (RFC 8555 §6.1); anything else is malformed."""
    if not isinstance(value, str) or not _B64URL.match(value) or len(value) % 4 == 1:
        raise malformed(f"{what} is not base64url without padding")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise malformed(f"{what} is not base64url") from None


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(slots=True)
class ParsedJws:
    protected_b64: str
    payload_b64: str
    signature: bytes
    alg: str
    nonce: str
    url: str
    kid: str | None
    jwk: josepy.JWK | None
    jwk_json: dict[str, Any] | None
    payload: bytes


def bad_signature_algorithm(alg: Any) -> Problem:
    return Problem(
        "badSignatureAlgorithm",
        f"signature algorithm {alg!r} is not supported",
        extra={"algorithms": sorted(ALLOWED_ALGORITHMS)},
    )


def load_jwk(value: Any) -> tuple[josepy.JWK, dict[str, Any]]:
    """A client's public JWK, checked against key policy."""
    if not isinstance(value, dict):
        raise malformed("jwk must be a JSON object")
    if value.get("kty") not in ("RSA", "EC"):
        raise Problem("badPublicKey", f"key type {value.get('kty')!r} is not supported (RSA, EC)")
    if any(k in value for k in ("d", "p", "q", "dp", "dq", "qi", "k")):
        raise malformed("jwk must be a public key")
    try:
        key = josepy.JWK.from_json(value)
    except (josepy.DeserializationError, ValueError, TypeError, KeyError) as error:
        raise Problem("badPublicKey", f"the key is not a valid public JWK: {error}") from None
    check_public_key(raw_key(key))
    return key, value


def raw_key(jwk: josepy.JWK) -> Any:
    """The cryptography key inside a josepy JWK (josepy wraps it in a Comparable*Key)."""
    return getattr(jwk.key, "_wrapped", jwk.key)


def check_public_key(key: Any) -> None:
    """Key policy shared by account keys and CSR keys."""
    if isinstance(key, rsa.RSAPublicKey):
        if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
            raise Problem("badPublicKey", f"RSA keys must have {MIN_RSA_BITS} to {MAX_RSA_BITS} bits")
        exponent = key.public_numbers().e
        if exponent < 65537 or exponent % 2 == 0:
            raise Problem("badPublicKey", "RSA public exponent must be odd and at least 65537")
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ("secp256r1", "secp384r1", "secp521r1"):
            raise Problem("badPublicKey", f"curve {key.curve.name} is not supported")
    else:
        raise Problem("badPublicKey", "only RSA and ECDSA keys are supported")


def parse_inner_jws(body: bytes, expect_nonce: bool) -> ParsedJws:
    """A JWS carried inside another's payload (keyChange, EAB): jwk, url, and no nonce."""
    if expect_nonce:
        return parse_jws(body)
    try:
        return parse_jws(body, nonce_required=False)
    except Problem as problem:  # an unacceptable new key stays badPublicKey (RFC 8555 §7.3.5)
        raise Problem("badPublicKey" if problem.type == "badPublicKey" else "malformed",
                      f"inner JWS: {problem.detail}") from None


def parse_jws(body: bytes, nonce_required: bool = True) -> ParsedJws:
    """Parse a flattened JWS and check its protected header (no signature check, no I/O)."""
    try:
        envelope = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise malformed("request body is not JSON (a flattened JWS is required)") from None
    if not isinstance(envelope, dict):
        raise malformed("request body must be a flattened JWS JSON object")
    if "signatures" in envelope:
        raise malformed("JWS general serialization is not supported; use the flattened form")
    if "header" in envelope:
        raise malformed("JWS unprotected header is not allowed")
    extra = set(envelope) - {"protected", "payload", "signature"}
    if extra or len(envelope) != 3:
        raise malformed("JWS must have exactly the members protected, payload and signature")
    protected_b64, payload_b64 = envelope["protected"], envelope["payload"]
    if not isinstance(protected_b64, str) or len(protected_b64) > MAX_HEADER_LENGTH:
        raise malformed("JWS protected header is missing or too long")
    signature = b64url_decode(envelope["signature"], "JWS signature")
    if not signature:
        raise malformed("JWS signature is empty")
    try:
        header = orjson.loads(b64url_decode(protected_b64, "JWS protected header"))
    except orjson.JSONDecodeError:
        raise malformed("JWS protected header is not JSON") from None
    if not isinstance(header, dict):
        raise malformed("JWS protected header must be a JSON object")
    payload = b64url_decode(payload_b64, "JWS payload")

    alg = header.get("alg")
    if not isinstance(alg, str) or not alg:
        raise malformed("JWS protected header must contain alg")
    if alg not in ALLOWED_ALGORITHMS:
        raise bad_signature_algorithm(alg)
    if header.get("b64") is False or "crit" in header:
        raise malformed("JWS crit/b64 extensions are not supported")
    nonce = header.get("nonce")
    if not nonce_required:
        if nonce is not None:
            raise malformed("the inner JWS must not carry a nonce")
        if "jwk" not in header:
            raise malformed("the inner JWS must carry the new key as jwk")
        nonce = ""
    elif nonce is None:
        raise Problem("badNonce", "JWS protected header must contain a nonce")
    elif not isinstance(nonce, str) or not nonce or not _B64URL.match(nonce):
        raise Problem("badNonce", "JWS nonce is not base64url")
    url = header.get("url")
    if not isinstance(url, str) or not url:
        raise malformed("JWS protected header must contain url")
    has_jwk, has_kid = "jwk" in header, "kid" in header
    if has_jwk == has_kid:
        raise malformed("JWS protected header must contain exactly one of jwk and kid")
    jwk = jwk_json = None
    kid = None
    if has_jwk:
        jwk, jwk_json = load_jwk(header["jwk"])
        check_alg_matches_key(alg, jwk)
        if isinstance(header["jwk"], dict) and header["jwk"].get("alg", alg) != alg:
            raise bad_signature_algorithm(alg)  # the key says it is for another algorithm
    else:
        kid = header["kid"]
        if not isinstance(kid, str) or not kid:
            raise malformed("JWS kid must be a non-empty string (the account URL)")
    return ParsedJws(protected_b64, payload_b64, signature, alg, nonce, url, kid, jwk, jwk_json, payload)


def check_alg_matches_key(alg: str, jwk: josepy.JWK) -> None:
    key = raw_key(jwk)
    if isinstance(key, rsa.RSAPublicKey):
        ok = alg == "RS256"
    elif isinstance(key, ec.EllipticCurvePublicKey):
        ok = _CURVE_FOR_ALG.get(alg) == key.curve.name
    else:
        ok = False
    if not ok:
        raise bad_signature_algorithm(alg)


def verify_signature(jws: ParsedJws, jwk: josepy.JWK) -> None:
    check_alg_matches_key(jws.alg, jwk)
    message = f"{jws.protected_b64}.{jws.payload_b64}".encode()
    try:
        ok = ALLOWED_ALGORITHMS[jws.alg].verify(raw_key(jwk), message, jws.signature)
    except (ValueError, TypeError, josepy.Error):
        ok = False
    if not ok:
        raise malformed("JWS signature is invalid")


def payload_json(jws: ParsedJws) -> dict[str, Any]:
    """The payload as a JSON object (POST-as-GET, an empty payload, is handled by the caller)."""
    try:
        value = orjson.loads(jws.payload)
    except orjson.JSONDecodeError:
        raise malformed("JWS payload is not JSON") from None
    if not isinstance(value, dict):
        raise malformed("JWS payload must be a JSON object")
    return value


def thumbprint(jwk: josepy.JWK) -> str:
    """RFC 7638 SHA-256 thumbprint, base64url."""
    return b64url_encode(jwk.thumbprint())


def key_authorization(token: str, jwk: josepy.JWK | dict[str, Any]) -> str:
    """RFC 8555 §8.1: token "." base64url(JWK thumbprint of the account key)."""
    key = josepy.JWK.from_json(jwk) if isinstance(jwk, dict) else jwk
    return f"{token}.{thumbprint(key)}"
