"""What an operator can do, once: the API, the console and ``acme-ra`` (on the database) all call
:class:`AdminOperations`, which answers with :mod:`acme_ra_admin.schemas` models.

Revocation goes to the signer over NATS (``acme.rpc.revoke``), exactly as the frontend's
revokeCert does, so the upstream CA is told; the signer records it in the database. The status
reports are in :mod:`acme_ra_admin.status`, admin tokens and the audit log in
:mod:`acme_ra_admin.access`, the errors in :mod:`acme_ra_admin.errors`.

Every change takes ``actor`` (:class:`acme_ra.db.audit.Actor`: the admin token and client address
of an API or console request; unset: ``acme-ra`` on the database, ``cli:<OS user>``) and is
written to the audit log in the change's own transaction.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging

import nats.errors
from cryptography import x509

from acme_ra import bus, eab, natsauth
from acme_ra.config import Settings
from acme_ra.db import audit, inventory, lifecycle, models
from acme_ra.db.audit import Actor
from acme_ra.db.engine import Database
from acme_ra.protocol.policy import parse_rules
from acme_ra.sealing import Sealer
from acme_ra_admin import repository, schemas
from acme_ra_admin.access import AccessOperations
from acme_ra_admin.errors import Conflict, NotFound, OperationError, Rejected, Unavailable
from acme_ra_admin.natslink import NatsLink
from acme_ra_admin.status import StatusOperations

__all__ = [
    "REVOCATION_REASONS",
    "AdminOperations",
    "Conflict",
    "NatsLink",
    "NotFound",
    "OperationError",
    "Rejected",
    "Unavailable",
    "reason_code",
]

log = logging.getLogger("acme_ra_admin.operations")

# RFC 5280 reason codes an administrator may give (certificateHold, removeFromCRL and the CA
# compromise codes make no sense for an RA's end-entity certificates).
REVOCATION_REASONS = {
    "unspecified": 0,
    "keyCompromise": 1,
    "affiliationChanged": 3,
    "superseded": 4,
    "cessationOfOperation": 5,
    "privilegeWithdrawn": 9,
}


def reason_code(reason: int | str) -> int:
    """An RFC 5280 reason code from a number or its name (``1``, ``"1"``, ``keyCompromise``)."""
    if isinstance(reason, str) and reason.isascii() and reason.strip().isdigit():
        reason = int(reason)
    if isinstance(reason, int) and not isinstance(reason, bool) and reason in REVOCATION_REASONS.values():
        return reason
    if isinstance(reason, str):
        for name, code in REVOCATION_REASONS.items():
            if name.lower() == reason.strip().lower():
                return code
    allowed = ", ".join(f"{code} ({name})" for name, code in REVOCATION_REASONS.items())
    raise OperationError(f"revocation reason {reason!r} is not allowed; allowed: {allowed}")


def trace_id(traceparent: str | None) -> str | None:
    """The trace id inside a W3C traceparent (``00-<32 hex>-<16 hex>-<2 hex>``)."""
    if not traceparent:
        return None
    parts = traceparent.split("-")
    if len(parts) < 4 or len(parts[1]) != 32 or set(parts[1]) - set("0123456789abcdef") or parts[1] == "0" * 32:
        return None
    return parts[1]


def certificate_names(chain_pem: str) -> list[str]:
    try:
        return lifecycle.leaf_names(x509.load_pem_x509_certificate(chain_pem.encode()))
    except ValueError:
        return []


class AdminOperations(StatusOperations, AccessOperations):
    def __init__(self, settings: Settings, db: Database, nats_link: NatsLink) -> None:
        self.settings = settings
        self.db = db
        self.nats = nats_link
        self._sealer: Sealer | None = None

    @property
    def sealer(self) -> Sealer:
        if self._sealer is None:
            self._sealer = Sealer(self.settings.sealing_secret())
        return self._sealer

    @classmethod
    def from_settings(cls, settings: Settings, pool_size: int = 5) -> AdminOperations:
        link = NatsLink(settings.nats_url, natsauth.connect_options(settings, "admin") if settings.nats_url else None)
        return cls(settings, Database(settings.effective_database_url, pool_size), link)

    async def close(self) -> None:
        await self.nats.close()
        await self.db.dispose()

    # Accounts -------------------------------------------------------------------------------

    async def list_accounts(self, status: str | None = None, limit: int = repository.DEFAULT_LIMIT,
                            offset: int = 0) -> list[schemas.Account]:
        async with self.db.transaction() as session:
            rows = await repository.list_accounts(session, status, limit, offset)
        return [_account(row) for row in rows]

    async def get_account(self, account_id: str) -> schemas.Account:
        async with self.db.transaction() as session:
            row = await session.get(models.Account, account_id)
            if row is None:
                raise NotFound(f"no account {account_id}")
            orders, certificates = await repository.account_counts(session, account_id)
        return _account(row, orders, certificates)

    async def deactivate_account(self, account_id: str, actor: Actor | None = None) -> schemas.Account:
        async with self.db.transaction() as session:
            row = await session.get(models.Account, account_id)
            if row is None:
                raise NotFound(f"no account {account_id}")
            if not await repository.revoke_account(session, account_id):
                raise Conflict(f"account {account_id} is already {row.status}")
            await audit.record(session, actor or Actor.local(), "account.deactivate", account_id)
        log.info("account deactivated", extra={"account_id": account_id})
        return await self.get_account(account_id)

    # EAB keys -------------------------------------------------------------------------------

    async def create_eab_key(self, request: schemas.EabKeyCreate, actor: Actor | None = None) -> schemas.NewEabKey:
        try:
            allow, deny = parse_rules(request.allow), parse_rules(request.deny)
        except ValueError as error:
            raise OperationError(f"bad policy rule: {error}") from None
        profiles = self.settings.profile_descriptions
        if request.profile is not None and request.profile not in profiles:
            raise OperationError(f"profile {request.profile!r} is not one of ACME_RA_PROFILES ({', '.join(profiles)})")
        policy = None
        if allow or deny or not request.wildcards:
            policy = {"allow": allow, "deny": deny, "wildcards": request.wildcards}
        async with self.db.transaction() as session:
            new = await eab.create_key(session, self.sealer, request.label, policy, request.profile)
            row = await repository.get_eab_key(session, new.kid)
            assert row is not None
            await audit.record(session, actor or Actor.local(), "eab_key.create", new.kid,
                               {"label": request.label, "policy": policy, "profile": request.profile})
        log.info("eab key created", extra={"kid": new.kid, "label": request.label})
        return schemas.NewEabKey(**_eab_key(row).model_dump(), hmac_key=new.hmac_key)

    async def list_eab_keys(self) -> list[schemas.EabKey]:
        async with self.db.transaction() as session:
            rows = await eab.list_keys(session)
        return [_eab_key(row) for row in rows]

    async def revoke_eab_key(self, kid: str, actor: Actor | None = None) -> schemas.EabKey:
        async with self.db.transaction() as session:
            row = await repository.get_eab_key(session, kid)
            if row is None:
                raise NotFound(f"no EAB key {kid}")
            if not await eab.revoke_key(session, kid):
                raise Conflict(f"EAB key {kid} is already revoked")
            await session.refresh(row)
            await audit.record(session, actor or Actor.local(), "eab_key.revoke", kid, {"label": row.label})
        log.info("eab key revoked", extra={"kid": kid})
        return _eab_key(row)

    # Orders ---------------------------------------------------------------------------------

    async def list_orders(self, status: str | None = None, account_id: str | None = None,
                          limit: int = repository.DEFAULT_LIMIT, offset: int = 0,
                          search: str | None = None) -> list[schemas.Order]:
        """Newest first; ``search``: a name, or part of one."""
        async with self.db.transaction() as session:
            rows = await repository.list_orders(session, status, account_id, limit, offset, search)
        return [self._order(row) for row in rows]

    async def get_order(self, order_id: str) -> schemas.OrderDetail:
        async with self.db.transaction() as session:
            row = await session.get(models.Order, order_id)
            if row is None:
                raise NotFound(f"no order {order_id}")
            authzs = await repository.order_authorizations(session, order_id)
            upstream = await session.get(models.UpstreamOrder, order_id)
        return schemas.OrderDetail(
            **self._order(row).model_dump(),
            authorizations=[_authorization(a, cs) for a, cs in authzs],
            upstream=None if upstream is None else schemas.UpstreamOrder(
                upstream=upstream.upstream, state=upstream.state, url=upstream.url,
                orders_created=upstream.orders_created, error=upstream.error, updated_at=upstream.updated_at,
            ),
        )

    def trace_url(self, trace: str | None) -> str | None:
        template = self.settings.trace_url_template
        return template.replace("{trace_id}", trace) if template and trace else None

    def _order(self, row: models.Order) -> schemas.Order:
        trace = trace_id(row.trace_context)
        return schemas.Order(
            id=row.id, account_id=row.account_id, provisioner=row.provisioner, status=row.status,
            names=[str(i.get("value", "")) for i in row.identifiers or []],
            profile=row.profile, created_at=row.created_at, updated_at=row.updated_at, expires=row.expires,
            error=row.error, certificate_id=row.certificate_id, trace_id=trace, trace_url=self.trace_url(trace),
        )

    # Certificates ---------------------------------------------------------------------------

    async def list_certificates(self, account_id: str | None = None, revoked: bool | None = None,
                                limit: int = repository.DEFAULT_LIMIT, offset: int = 0,
                                wanted: inventory.CertificateFilter | None = None,
                                search: str | None = None) -> list[schemas.Certificate]:
        """Newest first; with ``wanted`` (the inventory's filter), what it asks for; ``search``: a
        name (or part of one) or a serial number."""
        wanted = wanted or inventory.CertificateFilter()
        if account_id is not None:
            wanted = dataclasses.replace(wanted, account_id=account_id)
        if revoked is not None:
            wanted = dataclasses.replace(wanted, revoked=revoked)
        async with self.db.transaction() as session:
            rows = await repository.list_certificates(session, wanted, limit, offset, search)
        return [_certificate(row, upstream, profile, eab_kid) for row, upstream, profile, eab_kid in rows]

    async def inventory(self, upstream: str | None = None, weeks: int = 13, days: int = 30) -> schemas.Inventory:
        """What expires per week, what was issued per day, and the certificates of the next 30 days
        that nothing replaced (soonest first)."""
        now = dt.datetime.now(dt.UTC)
        async with self.db.transaction() as session:
            expiring = await inventory.expiring_per_week(session, now, weeks)
            issued = await inventory.issued_per_day(session, now, days)
        lapsing = await self.list_certificates(limit=repository.DEFAULT_LIMIT, wanted=inventory.CertificateFilter(
            expiring_within=dt.timedelta(days=30), upstream=upstream, unreplaced=True))
        return schemas.Inventory(now=now, expiring_per_week=expiring, issued_per_day=issued, lapsing=lapsing)

    async def get_certificate(self, id_or_serial: str) -> schemas.CertificateDetail:
        row = await self._one_certificate(id_or_serial)
        return schemas.CertificateDetail(**_certificate(row).model_dump(), chain_pem=row.chain_pem)

    async def _one_certificate(self, id_or_serial: str) -> models.Certificate:
        async with self.db.transaction() as session:
            rows = await repository.find_certificates(session, id_or_serial)
        if not rows:
            raise NotFound(f"no certificate {id_or_serial}")
        if len(rows) > 1:
            raise Conflict(f"serial {id_or_serial} names {len(rows)} certificates; give the certificate id")
        return rows[0]

    async def revoke_certificate(self, id_or_serial: str, reason: int | str = 0,
                                 actor: Actor | None = None) -> schemas.Revocation:
        """Ask the signer to revoke upstream and record it (``bus.RevokeRequest``); the audit entry
        once the signer says it is revoked (the signer writes the certificate's row)."""
        code = reason_code(reason)
        row = await self._one_certificate(id_or_serial)
        if row.revoked_at is not None:
            raise Conflict(f"certificate {row.id} is already revoked")
        client = self.nats.require()
        request = bus.RevokeRequest(certificate_id=row.id, reason=code)
        fields = {"certificate_id": row.id, "serial": row.serial, "reason": code}
        try:
            message = await client.request(
                bus.SUBJECT_REVOKE_RPC, request.model_dump_json().encode(), timeout=bus.REVOKE_RPC_TIMEOUT_SECONDS
            )
            reply = bus.RevokeReply.model_validate_json(message.data)
        except nats.errors.NoRespondersError:
            raise Unavailable("no signer answers revocation requests; is the signer running?") from None
        except (nats.errors.TimeoutError, nats.errors.ConnectionClosedError):
            raise Unavailable("the signer did not answer in time; try again later") from None
        log.info("certificate revocation: %s", reply.outcome, extra=fields | {"outcome": reply.outcome})
        if reply.outcome == "already_revoked":
            raise Conflict(f"certificate {row.id} is already revoked")
        if reply.outcome == "rejected":
            detail = (reply.problem or {}).get("detail", "the upstream CA refused the revocation")
            raise Rejected(f"the upstream CA refused the revocation: {detail}")
        if reply.outcome != "revoked":
            raise Unavailable("the upstream CA cannot be reached now; try again later")
        async with self.db.transaction() as session:
            stored = await session.get(models.Certificate, row.id)
            assert stored is not None
            await audit.record(session, actor or Actor.local(), "certificate.revoke", row.id,
                               {"serial": row.serial, "reason": code, "names": certificate_names(row.chain_pem)})
        return schemas.Revocation(outcome="revoked", certificate=_certificate(stored))

    # Secrets at rest ------------------------------------------------------------------------

    async def reseal_secrets(self, actor: Actor | None = None) -> schemas.ResealReport:
        """Seal again, in today's format (acme_ra.sealing: a key per purpose), every secret at rest
        sealed in an older one. A value that does not open stops it all (nothing is written)."""
        from sqlalchemy import select, update

        from acme_ra.sealing import SealError, upstream_account_purpose

        report = schemas.ResealReport(resealed=0, current=0)
        async with self.db.transaction() as session:
            tables = [
                (models.EabKey, models.EabKey.kid, models.EabKey.hmac_key_sealed, eab.sealing_purpose),
                (models.UpstreamAccount, models.UpstreamAccount.id, models.UpstreamAccount.key_sealed,
                 upstream_account_purpose),
            ]
            for table, key, column, purpose in tables:
                for row_id, sealed in (await session.execute(select(key, column))).all():
                    try:
                        new = self.sealer.reseal(sealed, purpose(row_id))
                    except SealError as error:
                        raise Conflict(f"{table.__tablename__} {row_id}: {error}") from None
                    if new is None:
                        report.current += 1
                        continue
                    # Only if unchanged since read: a concurrent rewrite is already current.
                    await session.execute(update(table).where(key == row_id, column == sealed).values({column: new}))
                    report.resealed += 1
            if report.resealed:
                await audit.record(session, actor or Actor.local(), "secrets.reseal", "secrets at rest",
                                   {"resealed": report.resealed, "current": report.current})
        log.info("secrets resealed", extra={"resealed": report.resealed, "current": report.current})
        return report


def _account(row: models.Account, orders: int = 0, certificates: int = 0) -> schemas.Account:
    return schemas.Account(id=row.id, status=row.status, contact=[str(c) for c in row.contact or []],
                           created_at=row.created_at, eab_kid=row.eab_kid, orders=orders, certificates=certificates)


def _eab_key(row: models.EabKey) -> schemas.EabKey:
    status = "revoked" if row.revoked_at is not None else "bound" if row.account_id else "unused"
    return schemas.EabKey(
        kid=row.kid, label=row.label, policy=schemas.EabPolicy(**row.policy) if row.policy else None,
        profile=row.profile, created_at=row.created_at, revoked_at=row.revoked_at, account_id=row.account_id,
        status=status,
    )


def _authorization(row: models.Authorization, challenges: list[models.Challenge]) -> schemas.Authorization:
    value = ("*." if row.wildcard else "") + row.identifier_value
    return schemas.Authorization(
        id=row.id, identifier=f"{row.identifier_type}:{value}", wildcard=row.wildcard, status=row.status,
        expires=row.expires,
        challenges=[schemas.Challenge(id=c.id, type=c.type, status=c.status, validated=c.validated, error=c.error,
                                     validation_record=c.validation_record)
                    for c in challenges],
    )


def _certificate(row: models.Certificate, upstream: str | None = None, profile: str | None = None,
                 eab_kid: str | None = None) -> schemas.Certificate:
    now = dt.datetime.now(dt.UTC)
    status = "revoked" if row.revoked_at is not None else "expired" if row.not_after <= now else "valid"
    return schemas.Certificate(
        id=row.id, order_id=row.order_id, account_id=row.account_id, serial=row.serial,
        names=certificate_names(row.chain_pem), not_before=row.not_before, not_after=row.not_after,
        created_at=row.created_at, status=status, revoked_at=row.revoked_at, revocation_reason=row.revocation_reason,
        upstream=upstream, issuer=row.issuer, profile=profile, eab_kid=eab_kid,
    )

