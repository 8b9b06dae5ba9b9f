"""Secrets at rest (EAB HMAC keys, upstream account keys, the nonce HMAC key), sealed with AES-256-GCM.

Every purpose has its own key, derived from ACME_RA_SECRET_KEY (or its file) with HKDF-SHA256
(the purpose, e.g. ``eab:<kid>``, is the HKDF info); each sealed value carries its own random
nonce and names its purpose again as the associated data, so a value cannot be moved to another
purpose or row. Sealed values start with a version byte:

- ``\\x02`` (written today): the per-purpose HKDF key.
- ``\\x01`` (read only): one key for every purpose, SHA-256 of a label and the secret. Such values
  still open; ``Sealer.reseal`` (``acme-ra secrets reseal``, and every rewrite) turns them into ``\\x02``.
"""

from __future__ import annotations

import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_VERSION_1 = b"\x01"  # legacy: one SHA-256-derived key for every purpose (opened, never written)
_VERSION = b"\x02"  # one HKDF-derived key per purpose
# HKDF info prefixes: a sealing key and any other key derived from the secret (derive_key) never meet.
_SEAL_INFO = b"acme-ra sealing v2\x00"
_DERIVE_INFO = b"acme-ra derived key v1\x00"
_NONCE_BYTES = 12
_MIN_SEALED = 1 + _NONCE_BYTES + 16  # version, nonce, GCM tag
# The shortest ACME_RA_SECRET_KEY accepted (characters).
MIN_SECRET_LENGTH = 16


def upstream_account_purpose(row_id: str) -> str:
    """What an upstream ACME account key (``upstream_accounts.key_sealed``) is sealed for: the
    signer seals and opens it, the admin service reseals it."""
    return f"upstream-account:{row_id}"


class SealError(Exception):
    """A sealed value could not be opened (wrong ACME_RA_SECRET_KEY, or tampered)."""


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def derive_key(secret: bytes, purpose: str) -> bytes:
    """A 256-bit key of its own for ``purpose`` (e.g. the console's session MAC), from the secret."""
    return _hkdf(secret, _DERIVE_INFO + purpose.encode())


class Sealer:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_SECRET_LENGTH:
            raise ValueError(f"ACME_RA_SECRET_KEY must be at least {MIN_SECRET_LENGTH} characters")
        self._secret = secret
        self._legacy = AESGCM(hashlib.sha256(b"acme-ra sealing v1\x00" + secret).digest())

    def _aead(self, purpose: str) -> AESGCM:
        return AESGCM(_hkdf(self._secret, _SEAL_INFO + purpose.encode()))

    def seal(self, plaintext: bytes, purpose: str) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return _VERSION + nonce + self._aead(purpose).encrypt(nonce, plaintext, purpose.encode())

    def open(self, sealed: bytes, purpose: str) -> bytes:
        version = sealed[:1]
        if version not in (_VERSION, _VERSION_1) or len(sealed) < _MIN_SEALED:
            raise SealError("not a sealed value")
        aead = self._aead(purpose) if version == _VERSION else self._legacy
        nonce, ciphertext = sealed[1:1 + _NONCE_BYTES], sealed[1 + _NONCE_BYTES:]
        try:
            return aead.decrypt(nonce, ciphertext, purpose.encode())
        except InvalidTag:
            raise SealError("cannot open a sealed secret: wrong ACME_RA_SECRET_KEY or tampered data") from None

    @staticmethod
    def is_current(sealed: bytes) -> bool:
        """Whether ``sealed`` is in today's format (else ``reseal`` rewrites it)."""
        return sealed[:1] == _VERSION

    def reseal(self, sealed: bytes, purpose: str) -> bytes | None:
        """``sealed`` sealed again in today's format, or None when it already is (SealError if it
        does not open)."""
        if self.is_current(sealed):
            self.open(sealed, purpose)  # a wrong secret or tampering is reported, not skipped
            return None
        return self.seal(self.open(sealed, purpose), purpose)
