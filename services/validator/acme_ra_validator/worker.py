"""The job handler: one ``ValidateJob`` = load the challenge, check it, record the outcome, ack.

Idempotent: a job whose challenge is no longer ``processing`` is only acked, and the outcome is
recorded with a conditional update, so a redelivery (to this or another replica) changes nothing.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
import time
from dataclasses import dataclass
from typing import Any

import dns.exception
import httpx
import josepy
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from sqlalchemy import select

from acme_ra import bus
from acme_ra.db.engine import Database
from acme_ra.db.lifecycle import record_challenge_outcome
from acme_ra.db.models import Account, Authorization, Challenge, ChallengeStatus
from acme_ra_validator import metrics
from acme_ra_validator.dns01 import check_dns01
from acme_ra_validator.failure import ValidationFailure
from acme_ra_validator.http01 import check_http01
from acme_ra_validator.resolver import NameResolver

log = logging.getLogger("acme_ra_validator.worker")

# The most one check may take, all addresses and redirects included; below the consumer's
# ack wait (bus.VALIDATE_ACK_WAIT_SECONDS) so that a slow check never causes a redelivery.
VALIDATION_TIMEOUT_SECONDS = 45.0

SERVER_INTERNAL = {"type": "serverInternal", "detail": "validation failed unexpectedly"}


def key_authorization(token: str, jwk: dict[str, Any]) -> str:
    """``token.thumbprint`` with the RFC 7638 SHA-256 thumbprint in base64url, no padding."""
    thumbprint = josepy.JWK.from_json(jwk).thumbprint()
    return token + "." + base64.urlsafe_b64encode(thumbprint).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class ChallengeToCheck:
    """What a check needs, read in one session that is closed before any network I/O."""

    challenge_id: str
    type: str
    status: str
    token: str
    identifier_type: str
    identifier_value: str
    jwk: dict[str, Any]


class ChallengeValidator:
    """Checks challenges and records outcomes; one per process, shared by concurrent jobs."""

    def __init__(
        self,
        db: Database,
        http: httpx.AsyncClient,
        resolver: NameResolver,
        *,
        http_port: int,
        authz_lifetime: dt.timedelta,
        js: JetStreamContext | None = None,
    ) -> None:
        self.db = db
        self.http = http
        self.resolver = resolver
        self.http_port = http_port
        self.authz_lifetime = authz_lifetime
        self.js = js

    async def handle(self, job: bus.ValidateJob, msg: Msg) -> None:
        """The ``bus.consume`` handler. Raises only when the outcome could not be stored."""
        with metrics.JOBS_IN_FLIGHT.track_inprogress():
            await self._handle(job, msg)

    async def _handle(self, job: bus.ValidateJob, msg: Msg) -> None:
        started = time.monotonic()
        challenge = await self.load(job.challenge_id)
        if challenge is None or challenge.status != ChallengeStatus.processing.value:
            await msg.ack()
            self._log(job, challenge.type if challenge else None, "missing" if challenge is None else "duplicate", started)
            return
        error = await self.validate(challenge)
        async with self.db.transaction() as session:
            changed = await record_challenge_outcome(session, challenge.challenge_id, error, self.authz_lifetime)
        await msg.ack()
        result = "valid" if error is None else error["type"]
        self._log(job, challenge.type, result if changed else "duplicate", started, error)
        if changed and self.js is not None:
            status = ChallengeStatus.valid.value if error is None else ChallengeStatus.invalid.value
            event = bus.Event(kind="validated", challenge_id=challenge.challenge_id, order_id=job.order_id, status=status)
            await bus.publish_event(self.js, event)

    async def load(self, challenge_id: str) -> ChallengeToCheck | None:
        async with self.db.sessions() as session:
            row = (
                await session.execute(
                    select(
                        Challenge.type,
                        Challenge.status,
                        Challenge.token,
                        Authorization.identifier_type,
                        Authorization.identifier_value,
                        Account.jwk,
                    )
                    .join(Authorization, Authorization.id == Challenge.authz_id)
                    .join(Account, Account.id == Authorization.account_id)
                    .where(Challenge.id == challenge_id)
                )
            ).one_or_none()
        if row is None:
            return None
        return ChallengeToCheck(challenge_id, *row)

    async def validate(self, challenge: ChallengeToCheck) -> dict[str, Any] | None:
        """Check one challenge: None when valid, else a problem as data. Never raises."""
        label = metrics.type_label(challenge.type)
        started = time.monotonic()
        try:
            async with asyncio.timeout(VALIDATION_TIMEOUT_SECONDS):
                await self._check(challenge)
            error = None
        except ValidationFailure as failure:
            error = failure.to_data()
        except TimeoutError:
            error = {"type": "connection", "detail": f"Validation timed out after {VALIDATION_TIMEOUT_SECONDS:.0f} s"}
        except (httpx.TransportError, OSError):
            error = {"type": "connection", "detail": "Could not connect to the server being validated"}
        except dns.exception.DNSException:
            error = {"type": "dns", "detail": "DNS lookup failed"}
        except Exception:
            log.exception("challenge check failed unexpectedly", extra={"challenge_id": challenge.challenge_id})
            error = dict(SERVER_INTERNAL)
        metrics.VALIDATION_SECONDS.labels(label).observe(time.monotonic() - started)
        metrics.VALIDATIONS.labels(label, "valid" if error is None else error["type"]).inc()
        return error

    async def _check(self, challenge: ChallengeToCheck) -> None:
        key_auth = key_authorization(challenge.token, challenge.jwk)
        if challenge.type == "http-01" and challenge.identifier_type in ("dns", "ip"):
            await check_http01(
                self.http, self.resolver, challenge.identifier_value, self.http_port, challenge.token, key_auth
            )
        elif challenge.type == "dns-01" and challenge.identifier_type == "dns":
            await check_dns01(self.resolver, challenge.identifier_value, key_auth)
        else:
            raise ValidationFailure(
                "serverInternal",
                f"challenge type {challenge.type} is not supported for {challenge.identifier_type} identifiers",
            )

    def _log(
        self,
        job: bus.ValidateJob,
        challenge_type: str | None,
        result: str,
        started: float,
        error: dict[str, Any] | None = None,
    ) -> None:
        log.info(
            "validation job done",
            extra={
                "challenge_id": job.challenge_id,
                "order_id": job.order_id,
                "challenge_type": challenge_type,
                "result": result,
                "duration_ms": round((time.monotonic() - started) * 1000, 1),
                **({"problem_detail": error["detail"]} if error else {}),
            },
        )
