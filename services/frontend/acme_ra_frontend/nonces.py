"""Replay nonces valid on every frontend replica, with no database write per nonce issued.

A nonce is base64url(timestamp ‖ random ‖ HMAC(key, timestamp ‖ random)), under a key shared by
all replicas through the database (``server_keys``). Redeeming (repo.authentication.redeem_nonce) inserts it
into ``redeemed_nonces`` in the request's own transaction: the primary key makes a second use
insert nothing, even when two requests race. Rows past the nonce lifetime are purged.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import secrets
import struct
import time

from acme_ra.db.engine import Database
from acme_ra.db.models import utcnow
from acme_ra.protocol.jws import b64url_decode, b64url_encode
from acme_ra.protocol.problems import Problem, bad_nonce
from acme_ra.sealing import Sealer
from acme_ra_frontend.repo import nonces as repo_nonces

# The row of the shared key, sealed (acme_ra.sealing) with purpose "server-key:<name>". The
# "nonce-hmac-v1" row of earlier releases held the key in the clear: migration 0009 deletes it.
NONCE_KEY_NAME = "nonce-hmac-v2"
_MAC_BYTES = 16
_RANDOM_BYTES = 8
_NONCE_BYTES = 8 + _RANDOM_BYTES + _MAC_BYTES


async def load_or_create_key(db: Database, sealer: Sealer) -> bytes:
    """The shared HMAC key: the first replica to start creates it (sealed), the others read it.
    SealError when ACME_RA_SECRET_KEY is not the one that sealed it."""
    purpose = f"server-key:{NONCE_KEY_NAME}"
    sealed = await repo_nonces.insert_or_read_server_key(db, NONCE_KEY_NAME, sealer.seal(os.urandom(32), purpose))
    return sealer.open(sealed, purpose)


class NonceService:
    def __init__(self, key: bytes, lifetime_seconds: int) -> None:
        self._key = key
        self.lifetime = lifetime_seconds

    def _mac(self, head: bytes) -> bytes:
        return hmac.new(self._key, head, hashlib.sha256).digest()[:_MAC_BYTES]

    def issue(self) -> str:
        head = struct.pack(">Q", time.time_ns() // 1_000_000) + secrets.token_bytes(_RANDOM_BYTES)
        return b64url_encode(head + self._mac(head))

    def check(self, nonce: str) -> dt.datetime:
        """Check a nonce was issued by a replica and is not expired; returns its expiry."""
        try:
            raw = b64url_decode(nonce, "nonce")  # the canonical spelling only: one nonce, one redemption
        except Problem:
            raise bad_nonce("nonce is not canonical base64url") from None
        if len(raw) != _NONCE_BYTES:
            raise bad_nonce("nonce was not issued by this server")
        head, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if not hmac.compare_digest(mac, self._mac(head)):
            raise bad_nonce("nonce was not issued by this server")
        issued_ms = struct.unpack(">Q", head[:8])[0]
        expires = dt.datetime.fromtimestamp(issued_ms / 1000 + self.lifetime, dt.UTC)
        if expires <= utcnow():
            raise bad_nonce("nonce has expired")
        return expires

    @staticmethod
    async def purge_expired(db: Database) -> int:
        return await repo_nonces.purge_redeemed_before(db, utcnow())
