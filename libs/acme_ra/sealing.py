"""Secrets at rest (EAB HMAC keys, upstream account keys), sealed with AES-256-GCM.

The key is derived from ACME_RA_SECRET_KEY (or its file); each sealed value carries its own
random nonce and names what it is (the associated data), so a value cannot be moved to
another purpose or row.
"""

from __future__ import annotations

import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_VERSION = b"\x01"


class SealError(Exception):
    """A sealed value could not be opened (wrong ACME_RA_SECRET_KEY, or tampered)."""


class Sealer:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("ACME_RA_SECRET_KEY must be at least 16 characters")
        self._aead = AESGCM(hashlib.sha256(b"acme-ra sealing v1\x00" + secret).digest())

    def seal(self, plaintext: bytes, purpose: str) -> bytes:
        nonce = os.urandom(12)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, purpose.encode())

    def open(self, sealed: bytes, purpose: str) -> bytes:
        if not sealed.startswith(_VERSION) or len(sealed) < 29:
            raise SealError("not a sealed value")
        try:
            return self._aead.decrypt(sealed[1:13], sealed[13:], purpose.encode())
        except InvalidTag:
            raise SealError("cannot open a sealed secret: wrong ACME_RA_SECRET_KEY or tampered data") from None
