"""Verification of ACME request bodies: flattened JWS (RFC 7515, RFC 8555 §6.2) with josepy.

``parse_jws`` checks the envelope and the protected header without any I/O; the caller then
finds the key (``jwk`` or the account behind ``kid``), calls ``verify_signature`` and only then
redeems the nonce, so that a request with a bad signature never burns a valid nonce.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
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
# RSA key policy, account keys and CSR keys alike (Boulder's goodkey): a modulus of 2048 to 4096
# bits, a whole number of bytes, odd and without a small prime factor; the public exponent exactly
# 65537 (a verify costs in proportion to the exponent's bits: an unbounded one is a CPU sink).
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 4096
RSA_EXPONENT = 65537
MAX_HEADER_LENGTH = 8192
# Deepest nesting of objects and arrays accepted in a protected header or a payload (ACME's
# deepest message, newAccount with its binding, nests 3; orjson itself stops at 1024).
MAX_JSON_DEPTH = 16
# Members of the canonical JWK stored and echoed (RFC 7638 §3.2: the required members only).
_EC_CURVES: dict[str, tuple[ec.EllipticCurve, int]] = {  # crv -> curve, coordinate length (bytes)
    "P-256": (ec.SECP256R1(), 32),
    "P-384": (ec.SECP384R1(), 48),
    "P-521": (ec.SECP521R1(), 66),
}
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
# The product of the odd primes below 1000: a modulus sharing a factor with it is refused.
_SMALL_PRIMES_PRODUCT = 1
for _p in range(3, 1000, 2):
    if all(_p % _d for _d in range(3, int(_p**0.5) + 1, 2)):
        _SMALL_PRIMES_PRODUCT *= _p

_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")


def b64url_decode(value: Any, what: str) -> bytes:
    """Strict base64url without padding (RFC 8555 §6.1, RFC 7515 §2); anything else is malformed.

    Only the canonical spelling is accepted: the unused low bits of the last character must be
    zero, so no two strings decode to the same bytes (a nonce is redeemable once, not once per
    spelling)."""
    if not isinstance(value, str) or not _B64URL.match(value) or len(value) % 4 == 1:
        raise malformed(f"{what} is not base64url without padding")
    try:
        data = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise malformed(f"{what} is not base64url") from None
    if len(value) % 4 and b64url_encode(data) != value:
        raise malformed(f"{what} is not canonical base64url (non-zero unused bits)")
    return data


def shown(value: Any) -> str:
    """A client's value in a problem's detail: a short string's repr, else only its JSON type."""
    if isinstance(value, str):
        return repr(value[:40] + ("..." if len(value) > 40 else ""))
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, (int, float)):
        return "a JSON number"
    return f"a JSON {'object' if isinstance(value, dict) else 'array'}"


def check_json(value: Any, what: str) -> None:
    """Parsed JSON fit to handle: nested at most MAX_JSON_DEPTH deep (nothing here recurses on
    a client's value), and no NUL character in any string or member name (PostgreSQL refuses NUL
    in text; no ACME field holds one)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise malformed(f"{what} holds a NUL character")
        elif isinstance(item, (dict, list)):
            if depth >= MAX_JSON_DEPTH:
                raise malformed(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels")
            if isinstance(item, dict):
                for name, member in item.items():
                    if "\x00" in name:
                        raise malformed(f"{what} holds a NUL character")
                    stack.append((member, depth + 1))
            else:
                stack.extend((member, depth + 1) for member in item)


def load_json(data: bytes, what: str) -> Any:
    """JSON from a client (orjson: strict UTF-8, no NaN, no lone surrogates, integers within 64
    bits or as floats), checked by ``check_json``."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise malformed(f"{what} is not JSON") from None
    check_json(value, what)
    return value


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise malformed("JWS protected header has a duplicate member name (RFC 7515 §5.2)")
    return dict(pairs)


def load_protected_header(data: bytes) -> Any:
    """The protected header: ``load_json``, and no member name twice at any level (RFC 7515 §5.2
    lets a parser refuse them rather than take the last: no two readers of one header disagree)."""
    header = load_json(data, "JWS protected header")
    if isinstance(header, dict):
        try:
            json.loads(data, object_pairs_hook=_unique_members)  # shallow (checked above)
        except ValueError:  # what orjson accepts the json module should too: refused all the same
            raise malformed("JWS protected header is not JSON") from None
    return header


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
        f"signature algorithm {shown(alg)} is not supported",
        extra={"algorithms": sorted(ALLOWED_ALGORITHMS)},
    )


def _key_member(value: dict[str, Any], name: str) -> bytes:
    member = value.get(name)
    if not isinstance(member, str) or not member:
        raise Problem("badPublicKey", f"jwk member {name} must be a non-empty base64url string")
    try:
        return b64url_decode(member, f"jwk member {name}")
    except Problem as problem:
        raise Problem("badPublicKey", problem.detail) from None


def _uint_b64(number: int) -> str:
    """RFC 7518 §2 Base64urlUInt: the fewest octets."""
    return b64url_encode(number.to_bytes(max(1, (number.bit_length() + 7) // 8), "big"))


def load_jwk(value: Any) -> tuple[josepy.JWK, dict[str, Any]]:
    """A client's public JWK, checked against key policy, and its canonical form: the required
    members only (RFC 7638 §3.2), what is stored and echoed, never the client's extra members.

    Every member is checked here, before any library sees the value: a string where one is
    required, strict base64url, the RSA exponent before any arithmetic with it, EC coordinates
    of their curve's exact length (RFC 7518 §6.2.1.2) on the curve."""
    if not isinstance(value, dict):
        raise malformed("jwk must be a JSON object")
    kty = value.get("kty")
    if kty not in ("RSA", "EC"):
        raise Problem("badPublicKey", f"key type {shown(kty)} is not supported (RSA, EC)")
    if any(k in value for k in _PRIVATE_MEMBERS):
        raise malformed("jwk must be a public key")
    key: Any
    if kty == "RSA":
        n = int.from_bytes(_key_member(value, "n"), "big")
        e = int.from_bytes(_key_member(value, "e"), "big")
        if e != RSA_EXPONENT:
            raise Problem("badPublicKey", f"RSA public exponent must be {RSA_EXPONENT}")
        _check_rsa_modulus(n)
        key = rsa.RSAPublicNumbers(e, n).public_key()
        canonical = {"e": _uint_b64(e), "kty": "RSA", "n": _uint_b64(n)}
        jwk: josepy.JWK = josepy.JWKRSA(key=key)
    else:
        crv = value.get("crv")
        if not isinstance(crv, str) or crv not in _EC_CURVES:
            raise Problem("badPublicKey", f"curve {shown(crv)} is not supported ({', '.join(_EC_CURVES)})")
        curve, length = _EC_CURVES[crv]
        x, y = _key_member(value, "x"), _key_member(value, "y")
        if len(x) != length or len(y) != length:
            raise Problem("badPublicKey", f"{crv} coordinates must be {length} bytes long")
        try:
            key = ec.EllipticCurvePublicNumbers(
                int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve).public_key()
        except ValueError:
            raise Problem("badPublicKey", f"the point is not on the curve {crv}") from None
        canonical = {"crv": crv, "kty": "EC", "x": b64url_encode(x), "y": b64url_encode(y)}
        jwk = josepy.JWKEC(key=key)
    check_public_key(key)
    return jwk, canonical


def _check_rsa_modulus(n: int) -> None:
    bits = n.bit_length()
    if not MIN_RSA_BITS <= bits <= MAX_RSA_BITS or bits % 8:
        raise Problem("badPublicKey", f"RSA keys must have {MIN_RSA_BITS} to {MAX_RSA_BITS} bits, "
                                      f"a multiple of 8 (this one: {bits})")
    if n % 2 == 0 or math.gcd(n, _SMALL_PRIMES_PRODUCT) != 1:
        raise Problem("badPublicKey", "RSA modulus has a small prime factor")


def raw_key(jwk: josepy.JWK) -> Any:
    """The cryptography key inside a josepy JWK (josepy wraps it in a Comparable*Key)."""
    return getattr(jwk.key, "_wrapped", jwk.key)


def check_public_key(key: Any) -> None:
    """Key policy shared by account keys and CSR keys."""
    if isinstance(key, rsa.RSAPublicKey):
        numbers = key.public_numbers()
        if numbers.e != RSA_EXPONENT:
            raise Problem("badPublicKey", f"RSA public exponent must be {RSA_EXPONENT}")
        _check_rsa_modulus(numbers.n)
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
    header = load_protected_header(b64url_decode(protected_b64, "JWS protected header"))
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
    value = load_json(jws.payload, "JWS payload")
    if not isinstance(value, dict):
        raise malformed("JWS payload must be a JSON object")
    return value


def thumbprint(jwk: josepy.JWK) -> str:
    """RFC 7638 SHA-256 thumbprint, base64url."""
    return b64url_encode(jwk.thumbprint())


def key_authorization(token: str, jwk: josepy.JWK | dict[str, Any]) -> str:
    """RFC 8555 §8.1: token "." base64url(JWK thumbprint of the account key)."""
    key = jwk if isinstance(jwk, josepy.JWK) else _jwk_from_json(jwk)
    return f"{token}.{thumbprint(key)}"


def _jwk_from_json(jwk: dict[str, Any]) -> josepy.JWK:
    key = josepy.JWK.from_json(jwk)
    assert isinstance(key, josepy.JWK)  # JWK.from_json returns the subclass of the key's "kty"
    return key
