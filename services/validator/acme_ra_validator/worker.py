"""The job handler: one ``ValidateJob`` = load the challenge, check it, record the outcome, ack.

Two round trips to PostgreSQL per job, on autocommit connections (no BEGIN, no COMMIT, no ORM
session; straight on asyncpg, ``acme_ra.db.fast``): the challenge's read, and the outcome as one
statement; a third only when that statement left an order holding the authorization pending: the
order looked at again after the commit (``settle_again``).

Idempotent: a job whose challenge is no longer ``processing`` is only acked, and the outcome is
recorded with a conditional update, so a redelivery (to this or another replica) changes nothing.

Poison jobs: a job whose check was started ``ValidationOptions.max_attempts`` times
(``ACME_RA_VALIDATION_MAX_ATTEMPTS``) without an outcome stored (its validator OOM-killed, or the
outcome failed to commit) is not checked again: the challenge ends ``invalid`` with ``abandoned``
and the job is acked, so one hostile answer cannot take validators down one after another. The
count is the challenge's ``check_attempts``, written only on a redelivery (JetStream's
``num_delivered`` > 1, one UPDATE before the check), so the first delivery costs nothing more;
deliveries that failed before the check (the database away: the load fails) are not counted,
so an outage does not turn into abandoned challenges.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import dns.exception
import httpx
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from sqlalchemy import Select, Table, Update, bindparam, select, update

from acme_ra import bus, telemetry
from acme_ra.config import Settings
from acme_ra.db.engine import Database
from acme_ra.db.fast import Statement
from acme_ra.db.lifecycle import finish_challenge, settle_pending_orders
from acme_ra.db.models import Account, Authorization, Challenge, ChallengeStatus, Order, OrderAuthorization
from acme_ra_validator import metrics
from acme_ra_validator.account_dns import ACCOUNT_DNS_TYPES, authz_lifetime, check_account_dns
from acme_ra_validator.caa import check_caa
from acme_ra_validator.dns01 import check_dns01
from acme_ra_validator.failure import ValidationFailure
from acme_ra_validator.http01 import ValidationPorts, check_http01
from acme_ra_validator.network import NetworkPolicy
from acme_ra_validator.resolver import NameResolver
from acme_ra_validator.tlsalpn01 import check_tls_alpn01

if TYPE_CHECKING:
    from acme_ra_validator.mpic import Corroboration

log = logging.getLogger("acme_ra_validator.worker")

# The most one check may take, all addresses, redirects and bytes included (ACME_RA_VALIDATION_
# TIMEOUT_SECONDS, default 45); bus.consume's heartbeats keep the job from being redelivered
# meanwhile; below the reconciler's CHALLENGE_DEADLINE.
VALIDATION_TIMEOUT_SECONDS = 45.0
# Checks of one challenge that may fail or crash a validator (ACME_RA_VALIDATION_MAX_ATTEMPTS,
# default 3): the next delivery ends the challenge invalid without checking it.
MAX_ATTEMPTS = 3

SERVER_INTERNAL = {"type": "serverInternal", "detail": "validation failed unexpectedly"}


def abandoned(attempts: int) -> dict[str, Any]:
    """The problem of a challenge whose job failed or crashed a validator ``attempts`` times."""
    return {
        "type": "serverInternal",
        "detail": f"validation was attempted {attempts} time{'' if attempts == 1 else 's'} and never completed "
        "(the validator failed or stopped each time); it is not tried again",
    }


def _count_check_statement() -> Update:
    """A redelivered job's check is about to start: one more in ``check_attempts`` (only while
    the challenge is processing), the count returned."""
    challenges = cast(Table, Challenge.__table__)
    return (
        update(challenges)
        .where(challenges.c.id == bindparam("p_challenge_id"), challenges.c.status == ChallengeStatus.processing.value)
        .values(check_attempts=challenges.c.check_attempts + 1)
        .returning(challenges.c.check_attempts)
    )


_COUNT_CHECK = Statement(_count_check_statement())


def delivery_count(msg: Msg) -> int:
    """Which delivery of the job this is (JetStream's ``num_delivered``, 1 = first); 1 when the
    message carries no JetStream metadata."""
    try:
        return int(msg.metadata.num_delivered or 1)
    except Exception:  # noqa: BLE001 - not a JetStream message (tests) or no metadata
        return 1


@dataclass(frozen=True)
class ValidationOptions:
    """How challenges are checked (from the ACME_RA_* settings)."""

    ports: ValidationPorts
    network_policy: NetworkPolicy
    # ACME_RA_CAA_IDENTITIES; empty = no CAA check.
    caa_identities: tuple[str, ...] = ()
    # ACME_RA_EXTERNAL_URL: account URLs (CAA accounturi) are built from it.
    external_url: str = "https://localhost:8443"
    # ACME_RA_VALIDATION_TIMEOUT_SECONDS: the most one check may take.
    timeout_seconds: float = VALIDATION_TIMEOUT_SECONDS
    # ACME_RA_VALIDATION_MAX_ATTEMPTS: deliveries of one job before it is abandoned.
    max_attempts: int = MAX_ATTEMPTS
    # ACME_RA_DNS_PERSIST_ISSUER_DOMAINS: the issuer domain names a dns-persist-01 record may name.
    persist_issuer_domains: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> ValidationOptions:
        return cls(
            ports=ValidationPorts(settings.validation_http_port, settings.validation_tls_port),
            network_policy=NetworkPolicy.from_lists(
                settings.validation_allow_networks, settings.validation_deny_networks
            ),
            caa_identities=tuple(settings.caa_identity_list),
            external_url=settings.external_url,
            timeout_seconds=settings.validation_timeout_seconds,
            max_attempts=settings.validation_max_attempts,
            persist_issuer_domains=tuple(settings.dns_persist_issuer_domain_list),
        )

    def account_url(self, provisioner: str, account_id: str) -> str:
        """The account's URL as clients see it (the frontend's ``Urls.account``)."""
        return f"{self.external_url}/acme/{provisioner}/account/{account_id}"


@dataclass(frozen=True)
class ChallengeToCheck:
    """What a check needs, read in one session that is closed before any network I/O."""

    challenge_id: str
    authz_id: str
    type: str
    status: str
    token: str
    identifier_type: str
    identifier_value: str
    wildcard: bool
    account_id: str
    # The account key's RFC 7638 thumbprint (``jws.thumbprint``), as the frontend stores it with
    # the key (keyChange replaces both at once): the key authorization needs nothing else of the
    # key, and parsing the JWK again cost ~80 µs per job.
    key_thumbprint: str
    # The provisioner of the (first) order holding the authorization; None if there is none.
    provisioner: str | None


def _load_challenge_statement() -> Select[Any]:
    """What a check needs of challenge ``p_challenge_id``, in one query (built once: Core on the
    tables, run straight on asyncpg on PostgreSQL)."""
    challenges, authzs = cast(Table, Challenge.__table__), cast(Table, Authorization.__table__)
    accounts, orders = cast(Table, Account.__table__), cast(Table, Order.__table__)
    held = cast(Table, OrderAuthorization.__table__)
    first_order_provisioner = (
        select(orders.c.provisioner)
        .join(held, held.c.order_id == orders.c.id)
        .where(held.c.authz_id == authzs.c.id)
        .order_by(orders.c.created_at)
        .limit(1)
        .correlate(authzs)
        .scalar_subquery()
    )
    return (
        select(
            challenges.c.authz_id,
            challenges.c.type,
            challenges.c.status,
            challenges.c.token,
            authzs.c.identifier_type,
            authzs.c.identifier_value,
            authzs.c.wildcard,
            authzs.c.account_id,
            accounts.c.key_thumbprint,
            first_order_provisioner,
        )
        .select_from(challenges)
        .join(authzs, authzs.c.id == challenges.c.authz_id)
        .join(accounts, accounts.c.id == authzs.c.account_id)
        .where(challenges.c.id == bindparam("p_challenge_id"))
    )


_LOAD_CHALLENGE = Statement(_load_challenge_statement())


class ChallengeValidator:
    """Checks challenges and records outcomes; one per process, shared by concurrent jobs."""

    def __init__(
        self,
        db: Database,
        http: httpx.AsyncClient,
        resolver: NameResolver,
        options: ValidationOptions,
        *,
        authz_lifetime: dt.timedelta,
        nc: NATS | None = None,
    ) -> None:
        self.db = db
        self.http = http
        self.resolver = resolver
        self.options = options
        self.authz_lifetime = authz_lifetime
        # Where the validated events go once connected (run_consumer sets it).
        self.nc = nc
        # The persistUntil of the dns-persist-01 record that validated a challenge, by challenge id.
        self.persist_until: dict[str, int] = {}
        # Multi-perspective corroboration (ACME_RA_MPIC_REMOTE_PERSPECTIVES > 0): app.py sets it.
        self.corroboration: Corroboration | None = None

    async def handle(self, job: bus.ValidateJob, msg: Msg) -> None:
        """The ``bus.consume`` handler. Raises only when the outcome could not be stored."""
        with metrics.JOBS_IN_FLIGHT.track_inprogress():
            await self._handle(job, msg)

    async def _handle(self, job: bus.ValidateJob, msg: Msg) -> None:
        started = time.monotonic()
        # The order's trace, carried by the job (absent when tracing is off).
        traceparent = (msg.headers or {}).get("traceparent")
        with telemetry.span(
            "validator.validate", traceparent, **{"acme.challenge_id": job.challenge_id, "acme.order_id": job.order_id}
        ) as span:
            challenge = await self.load(job.challenge_id)
            if challenge is not None:
                span.set_attribute("acme.challenge_type", challenge.type)
            if challenge is None or challenge.status != ChallengeStatus.processing.value:
                await msg.ack()
                outcome = "missing" if challenge is None else "duplicate"
                span.set_attribute("acme.outcome", outcome)
                self._log(job, challenge.type if challenge else None, outcome, started)
                return
            error: dict[str, Any] | None
            earlier = await self.earlier_checks(challenge.challenge_id, delivery_count(msg))
            if earlier >= self.options.max_attempts:
                # Checked this often already, never to the end: the check fails or kills its validator.
                error = abandoned(earlier)
                metrics.VALIDATIONS.labels(metrics.type_label(challenge.type), "abandoned").inc()
                log.warning("validation job abandoned", extra={"challenge_id": job.challenge_id, "checks": earlier})
            elif self.corroboration is not None:
                error = await self.corroboration.validate(self, challenge)
            else:
                error = await self.validate(challenge)
            # One statement on PostgreSQL, three in SQLite's transaction: see finish_challenge.
            async with self.db.autocommit() as conn:
                lifetime = authz_lifetime(self.authz_lifetime, self.persist_until.pop(challenge.challenge_id, None))
                finished = await finish_challenge(conn, challenge.challenge_id, error, lifetime)
            changed = finished is not None
            if finished is not None and finished.orders_left_pending and error is None:
                await self.settle_again(finished.authz_id)
            await msg.ack()
            result = "valid" if error is None else error["type"]
            span.set_attribute("acme.outcome", result if changed else "duplicate")
            self._log(job, challenge.type, result if changed else "duplicate", started, error)
            if finished is not None and self.nc is not None:
                status = ChallengeStatus.valid.value if error is None else ChallengeStatus.invalid.value
                event = bus.Event(kind="validated", challenge_id=challenge.challenge_id, order_id=job.order_id,
                                  status=status, validated=finished.validated, error=error)
                await bus.publish_event_unconfirmed(self.nc, event)

    async def earlier_checks(self, challenge_id: str, delivery: int) -> int:
        """How many checks of this challenge may have started before this one without an outcome:
        none on a first delivery (nothing written); on a redelivery the first delivery's (counted
        whether or not it got that far) and those of the redeliveries recorded before this one."""
        if delivery <= 1:
            return 0
        async with self.db.autocommit() as conn:
            row = (await _COUNT_CHECK.run(conn, {"p_challenge_id": challenge_id})).first()
        return 0 if row is None else int(row[0])  # this one included, the first delivery's not: one each way

    async def settle_again(self, authz_id: str) -> None:
        """Look at the orders holding a newly valid authorization once more, after the outcome
        is committed, when its statement left one pending. Two authorizations of one
        order validated at the same moment (two jobs, here or in another validator) each see the
        other still pending in their own statement, and the order would stay pending for ever;
        whichever commits last sees both valid here. An order already settled is not touched
        (the UPDATE matches pending orders only)."""
        async with self.db.autocommit() as conn:
            await settle_pending_orders(conn, authz_id)

    async def load(self, challenge_id: str) -> ChallengeToCheck | None:
        """One SELECT, on an autocommit connection: a snapshot is all it needs (the outcome's
        conditional UPDATE decides, whatever happened since)."""
        async with self.db.autocommit() as conn:
            row = (await _LOAD_CHALLENGE.run(conn, {"p_challenge_id": challenge_id})).first()
        if row is None:
            return None
        return ChallengeToCheck(challenge_id, *row)

    async def validate(self, challenge: ChallengeToCheck) -> dict[str, Any] | None:
        """Check one challenge: None when valid, else a problem as data. Never raises."""
        label = metrics.type_label(challenge.type)
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.options.timeout_seconds):
                await self._check(challenge)
            error = None
        except ValidationFailure as failure:
            error = failure.to_data()
        except TimeoutError:
            error = {
                "type": "connection",
                "detail": f"Validation of {challenge.identifier_value} ({challenge.type}) timed out after "
                f"{self.options.timeout_seconds:g} s: the server answered too slowly or not at all",
            }
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
        """The challenge's own check, then CAA for DNS names. Raises ValidationFailure."""
        options = self.options
        key_auth = f"{challenge.token}.{challenge.key_thumbprint}"  # RFC 8555 §8.1, jws.key_authorization
        kind, value = challenge.identifier_type, challenge.identifier_value
        if kind not in ("dns", "ip"):
            raise ValidationFailure("malformed", f"identifiers of type {kind} cannot be validated")
        if challenge.type == "dns-01":
            if kind == "ip":
                raise ValidationFailure("malformed", "dns-01 cannot validate an IP address identifier (RFC 8738 §7)")
            await check_dns01(self.resolver, value, key_auth)
        elif challenge.type in ACCOUNT_DNS_TYPES:
            if (until := await check_account_dns(self.resolver, options, challenge, key_auth)) is not None:
                self.persist_until[challenge.challenge_id] = until
        elif challenge.wildcard and challenge.type in ("http-01", "tls-alpn-01"):
            raise ValidationFailure("malformed", f"{challenge.type} cannot validate a wildcard name (RFC 8555 §7.1.3)")
        elif challenge.type == "http-01":
            await check_http01(
                self.http, self.resolver, options.network_policy, options.ports, value, challenge.token, key_auth
            )
        elif challenge.type == "tls-alpn-01":
            await check_tls_alpn01(self.resolver, options.network_policy, options.ports.tls, kind, value, key_auth)
        else:
            raise ValidationFailure("malformed", f"challenge type {challenge.type} is not supported")
        if kind == "dns" and options.caa_identities:
            # Without an order there is no account URL to match: an accounturi then never matches.
            account_uri = ""
            if challenge.provisioner is not None:
                account_uri = options.account_url(challenge.provisioner, challenge.account_id)
            await check_caa(
                self.resolver,
                value,
                wildcard=challenge.wildcard,
                identities=options.caa_identities,
                account_uri=account_uri,
                method=challenge.type,
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
