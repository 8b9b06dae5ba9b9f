"""Verification of an External Account Binding inside newAccount (RFC 8555 §7.3.4).

Order of checks (conformance E3): well-formed JWS → header (MAC alg, kid, no nonce, url equal to
the outer url) → the key behind kid → the MAC → the payload is the outer JWK.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from acme_ra.protocol.jws import b64url_decode, load_json, load_jwk, thumbprint
from acme_ra.protocol.problems import Problem, malformed, unauthorized

MAC_ALGORITHMS = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


def parse_binding(binding: Any, outer_url: str) -> tuple[str, str, bytes, bytes, dict[str, Any]]:
    """Check the binding's shape; returns (kid, alg, signing input, MAC, payload JWK)."""
    if not isinstance(binding, dict) or set(binding) != {"protected", "payload", "signature"}:
        raise malformed("externalAccountBinding must be a flattened JWS (protected, payload, signature)")
    protected_b64, payload_b64 = binding["protected"], binding["payload"]
    if not isinstance(protected_b64, str) or not isinstance(payload_b64, str):
        raise malformed("externalAccountBinding members must be strings")
    header = load_json(b64url_decode(protected_b64, "externalAccountBinding protected header"),
                       "externalAccountBinding protected header")
    payload = load_json(b64url_decode(payload_b64, "externalAccountBinding payload"), "externalAccountBinding payload")
    mac = b64url_decode(binding["signature"], "externalAccountBinding signature")
    if not isinstance(header, dict) or header.get("alg") not in MAC_ALGORITHMS:
        raise malformed("externalAccountBinding must use HS256, HS384 or HS512")
    if "nonce" in header:
        raise malformed("externalAccountBinding must not carry a nonce")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise malformed("externalAccountBinding must name its key with kid")
    if header.get("url") != outer_url:
        raise malformed("externalAccountBinding url must equal the newAccount url")
    if not isinstance(payload, dict):
        raise malformed("externalAccountBinding payload must be the account's JWK")
    return kid, header["alg"], f"{protected_b64}.{payload_b64}".encode(), mac, payload


def verify_binding_mac(alg: str, signing_input: bytes, mac: bytes, hmac_key: bytes) -> None:
    expected = hmac.new(hmac_key, signing_input, MAC_ALGORITHMS[alg]).digest()
    if not hmac.compare_digest(expected, mac):
        raise unauthorized("externalAccountBinding MAC does not verify")


def check_binding_key(payload_jwk: dict[str, Any], outer_jwk: dict[str, Any]) -> None:
    try:
        inner, _ = load_jwk(payload_jwk)
        outer, _ = load_jwk(outer_jwk)
    except Problem:
        raise Problem("badPublicKey", "externalAccountBinding payload is not a valid JWK") from None
    if thumbprint(inner) != thumbprint(outer):
        raise Problem("badPublicKey", "externalAccountBinding payload is not the account's key")
