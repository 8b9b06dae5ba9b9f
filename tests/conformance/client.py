"""A small ACME client of the tests' own: signs exactly what a test asks for, good or bad.

Real clients (certbot, lego, ...) are exercised in tests/e2e and tests/interop; this one exists
to send the malformed, replayed and mis-signed requests that real clients never send.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import httpx
import josepy
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def new_key(kind: str = "ec256") -> josepy.JWK:
    if kind == "rsa":
        return josepy.JWKRSA(key=rsa.generate_private_key(65537, 2048))
    curve = {"ec256": ec.SECP256R1(), "ec384": ec.SECP384R1()}[kind]
    return josepy.JWKEC(key=ec.generate_private_key(curve))


def alg_for(key: josepy.JWK) -> josepy.JWASignature:
    if isinstance(key, josepy.JWKRSA):
        return josepy.RS256
    return {256: josepy.ES256, 384: josepy.ES384, 521: josepy.ES512}[key.key.curve.key_size]


def make_csr(names: list[str], key: Any = None, cn: str | None = None) -> tuple[bytes, Any]:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER), key


@dataclass
class Reply:
    status: int
    headers: httpx.Headers
    body: Any
    text: str

    @property
    def location(self) -> str | None:
        location: str | None = self.headers.get("location")
        return location

    @property
    def problem_type(self) -> str | None:
        if isinstance(self.body, dict) and "type" in self.body:
            return str(self.body["type"]).removeprefix("urn:ietf:params:acme:error:")
        return None


class TestAcmeClient:
    __test__ = False  # not a test class

    def __init__(self, http: httpx.AsyncClient, directory_url: str, key: josepy.JWK | None = None) -> None:
        self.http = http
        self.directory_url = directory_url
        self.key = key or new_key()
        self.kid: str | None = None
        self.directory: dict[str, Any] = {}
        self._nonce: str | None = None

    async def load_directory(self) -> dict[str, Any]:
        response = await self.http.get(self.directory_url)
        response.raise_for_status()
        self.directory = response.json()
        return self.directory

    async def nonce(self) -> str:
        if self._nonce:
            nonce, self._nonce = self._nonce, None
            return nonce
        response = await self.http.head(self.directory["newNonce"])
        return response.headers["replay-nonce"]

    def sign(
        self,
        url: str,
        payload: Any,
        nonce: str | None,
        *,
        use_jwk: bool = False,
        key: josepy.JWK | None = None,
        header_overrides: dict[str, Any] | None = None,
    ) -> bytes:
        key = key or self.key
        alg = alg_for(key)
        protected: dict[str, Any] = {"alg": alg.name, "url": url}
        if nonce is not None:
            protected["nonce"] = nonce
        if use_jwk or self.kid is None:
            protected["jwk"] = key.public_key().to_partial_json()
        else:
            protected["kid"] = self.kid
        protected.update(header_overrides or {})
        protected = {k: v for k, v in protected.items() if v is not None}
        protected_b64 = b64(json.dumps(protected).encode())
        payload_b64 = "" if payload == "" else b64(json.dumps(payload).encode())
        signature = alg.sign(key.key, f"{protected_b64}.{payload_b64}".encode())
        return json.dumps({"protected": protected_b64, "payload": payload_b64, "signature": b64(signature)}).encode()

    async def post_raw(self, url: str, body: bytes, content_type: str = "application/jose+json") -> Reply:
        response = await self.http.post(url, content=body, headers={"Content-Type": content_type})
        if "replay-nonce" in response.headers:
            self._nonce = response.headers["replay-nonce"]
        try:
            parsed = response.json()
        except ValueError:
            parsed = None
        return Reply(response.status_code, response.headers, parsed, response.text)

    async def post(self, url: str, payload: Any = "", **kwargs: Any) -> Reply:
        return await self.post_raw(url, self.sign(url, payload, await self.nonce(), **kwargs))

    async def register(self, **payload: Any) -> Reply:
        reply = await self.post(
            self.directory["newAccount"], {"termsOfServiceAgreed": True, **payload}, use_jwk=True
        )
        if reply.status in (200, 201):
            self.kid = reply.location
        return reply

    def key_authorization(self, token: str) -> str:
        return f"{token}.{b64(self.key.thumbprint())}"
