"""The ``acme`` upstream: any ACME CA with External Account Binding (InCommon/Sectigo, Let's
Encrypt, ZeroSSL, step-ca, Pebble).

An issuance walks one upstream order through its states, recording each state in the journal
*before* taking the step (``upstream/journal.py``); what the upstream answered is recorded with
the next step's record when no upstream request comes between, or before a wait::

    creating ─newOrder─▶ pending ─(authorizations)─▶ finalizing ─finalize─▶ processing ─▶ valid ─download─▶ chain
                                                                                       ╰─▶ invalid (rejected)

A job that dies anywhere resumes from the recorded state. A new upstream order is created only
while none was ever finalized, and the upstream itself finalizes an order at most once: so an
acme-ra order gets at most one upstream certificate. Waiting honours the upstream's
``Retry-After``, else backs off exponentially; a job waits at most
``ACME_RA_UPSTREAM_ORDER_TIMEOUT_SECONDS`` and then hands the order back to the queue.

The authorizations are proved by ``upstream/authorizations.py`` (by ``authz_strategy``); which
upstream serves an order, and failover, are ``upstream/failover.py``'s.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from typing import Any

from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from acme_ra.db.engine import Database
from acme_ra.db.models import UpstreamOrderState, utcnow
from acme_ra.protocol.problems import STATUS_BY_TYPE
from acme_ra.sealing import Sealer
from acme_ra_signer import metrics
from acme_ra_signer.upstream import renewal_info
from acme_ra_signer.upstream.accounts import Account, AccountStore
from acme_ra_signer.upstream.acme_client import (
    PEM_CHAIN,
    AcmeClient,
    AcmeProblem,
    OrderLost,
    UpstreamResponse,
    link_urls,
    retry_after_seconds,
)
from acme_ra_signer.upstream.acme_config import Upstream
from acme_ra_signer.upstream.authorizations import Authorizer
from acme_ra_signer.upstream.base import (
    IssuedChain,
    IssueRequest,
    NamedUpstream,
    RenewalInfo,
    RequestNotSent,
    UpstreamError,
    UpstreamRejected,
    UpstreamUnavailable,
    said_by,
    upstream_problem,
)
from acme_ra_signer.upstream.journal import Journal
from acme_ra_signer.upstream.polling import poll_delay

log = logging.getLogger("acme_ra_signer.upstream.acme")

State = UpstreamOrderState
# A successful readiness check is trusted this long (seconds): probes must not hammer the CA.
CHECK_CACHE_SECONDS = 30.0
# Steps one issue call may take before it gives up (a guard against a state machine loop).
MAX_STEPS = 50
# Problem types that mean "try again later", never "this order cannot be issued".
TRANSIENT_PROBLEMS = {
    "serverInternal",
    "rateLimited",
    "badNonce",
    "accountDoesNotExist",
    "externalAccountRequired",
    "userActionRequired",
    "orderNotReady",
    "about:blank",
}


def problem_data(problem: AcmeProblem, upstream: str) -> dict[str, Any]:
    """An upstream problem as a problem *as data* for the order (short type, our wording)."""
    code = problem.code if problem.code in STATUS_BY_TYPE else "serverInternal"
    detail = problem.detail
    for sub in problem.error.subproblems or ():
        identifier = f"{sub.identifier.value}: " if sub.identifier else ""
        detail += f"; {identifier}{sub.detail or sub.typ}"
    return upstream_problem(upstream, code, detail)


class AcmeUpstream(NamedUpstream):
    """One named upstream: its client, its account, and the order walk."""

    type = "acme"

    def __init__(self, upstream: Upstream, db: Database, sealer: Sealer, client: AcmeClient, order_timeout: float):
        self.config = upstream
        self.name = upstream.name
        self.client = client
        self.accounts = AccountStore(db, sealer, upstream, client)
        self.order_timeout = order_timeout
        self.authorizer = Authorizer(self, db)  # by authz_strategy (upstream/authorizations.py)
        self._checked_at = -1e9

    # Requests as the account -----------------------------------------------------------------

    async def signed(self, url: str, payload: Any, accept: str | None = None) -> tuple[UpstreamResponse, Account]:
        """POST as the account; if the upstream no longer knows it, register again and retry."""
        try:
            account = await self.accounts.current()
            try:
                return await self.client.post(url, payload, account.key, account.url, accept=accept), account
            except AcmeProblem as problem:
                if problem.code not in ("accountDoesNotExist", "unauthorized"):
                    raise
                if problem.code == "unauthorized" and await self.accounts.is_valid(account):
                    raise  # the account is fine: the request itself is refused
                account = await self.accounts.replace(account)
            return await self.client.post(url, payload, account.key, account.url, accept=accept), account
        except UpstreamUnavailable:
            self._checked_at = -1e9  # readiness asks the upstream again
            raise

    def mapped(self, problem: AcmeProblem, what: str) -> UpstreamError:
        if problem.status >= 500 or problem.code in TRANSIENT_PROBLEMS:
            return UpstreamUnavailable(said_by(self.name, f"{what}: {problem}"))
        return UpstreamRejected(problem_data(problem, self.name))

    # Issuance ---------------------------------------------------------------------------------

    async def issue(self, request: IssueRequest, journal: Journal) -> IssuedChain:
        try:
            csr = x509.load_der_x509_csr(request.csr_der)
        except ValueError:
            raise UpstreamRejected({"type": "badCSR", "detail": "the CSR is not valid DER"}) from None
        deadline = time.monotonic() + self.order_timeout
        known: messages.Order | None = None  # newOrder's answer: no need to fetch it again
        if journal.entry.state != State.pending.value:
            # What a signer that died published; while pending it stays, as the upstream may be
            # validating it now: authorizing publishes it again (a no-op) and removes it.
            await self.authorizer.remove_records(journal)
        for _ in range(MAX_STEPS):
            state = journal.entry.state
            try:
                if state == State.creating.value:
                    known = await self._create_order(request, journal)
                elif state == State.pending.value:
                    retry_after = await self._advance_pending(journal, csr, deadline, known)
                    known = None
                    if retry_after is not None and journal.entry.state == State.processing.value:
                        await self.wait(retry_after, 0, deadline, "signing")
                elif state == State.finalizing.value:
                    retry_after = await self._finalize(journal, csr, deadline)
                    if retry_after is not None and journal.entry.state == State.processing.value:
                        await self.wait(retry_after, 0, deadline, "signing")
                elif state == State.processing.value:
                    await self._await_certificate(journal, deadline)
                elif state == State.valid.value:
                    return await self._download(journal, csr)
                elif state == State.invalid.value:
                    raise UpstreamRejected(
                        journal.entry.error or upstream_problem(self.name, "serverInternal", "the order failed")
                    )
                else:
                    raise UpstreamUnavailable(f"unknown upstream order state {state!r}")
            except OrderLost:
                await self._order_lost(journal)
            except UpstreamRejected as rejected:
                # Every problem of this upstream's orders starts by naming it (one place for all).
                rejected.problem = {**rejected.problem, "detail": said_by(self.name, str(rejected.problem.get("detail", "")))}
                await self.authorizer.remove_records(journal)
                if journal.entry.state != State.invalid.value:
                    await journal.finish(state=State.invalid.value, error=rejected.problem)
                raise
        raise UpstreamUnavailable(said_by(self.name, f"the order did not settle in {MAX_STEPS} steps"))

    async def _create_order(self, request: IssueRequest, journal: Journal) -> messages.Order:
        if journal.entry.finalized_at is not None:  # never: a finalized order is never replaced
            raise UpstreamRejected(
                {"type": "serverInternal", "detail": "the upstream order was finalized and cannot be replaced"}
            )
        directory = await self.client.directory()
        body: dict[str, Any] = {"identifiers": [dict(i) for i in request.identifiers]}
        validity = self._validity(request)
        body.update(validity)
        # Recorded before it is sent: a crash now leaves at most an unfinalized upstream order.
        await journal.save(
            state=State.creating.value,
            orders_created=journal.entry.orders_created + 1,
            url=None,
            finalize_url=None,
            certificate_url=None,
        )
        try:
            response, account = await self.signed(directory["newOrder"], body)
        except AcmeProblem as problem:
            if (
                validity
                and problem.status < 500
                and any(word in problem.detail.lower() for word in ("notafter", "notbefore", "validity", "lifetime"))
            ):
                lifetime = self.config.setting("cert_lifetime_days")
                raise UpstreamRejected(
                    upstream_problem(
                        self.name,
                        "malformed" if request.not_after else "serverInternal",
                        f"{problem.detail} (acme-ra asked for the validity {validity}, from the order or {lifetime})",
                    )
                ) from None
            raise self.mapped(problem, "newOrder") from None
        metrics.UPSTREAM_ORDERS_CREATED.labels(self.name).inc()
        order: messages.Order = messages.Order.from_json(response.json())
        url = response.headers.get("Location")
        if not url or not order.finalize:
            raise UpstreamUnavailable(said_by(self.name, "newOrder answered without Location or finalize URL"))
        created = {"state": State.pending.value, "url": url, "finalize_url": order.finalize, "account_url": account.url}
        if order.status.name == "ready":
            journal.note(**created)  # pre-validated: recorded with "finalizing", the very next step
        else:
            await journal.save(**created)
        log.info("upstream order created", extra={"upstream": self.name, "upstream_order": url})
        return order

    def _validity(self, request: IssueRequest) -> dict[str, str]:
        validity: dict[str, str] = {}
        if request.not_before is not None:
            validity["notBefore"] = _rfc3339(request.not_before)
        if request.not_after is not None:
            validity["notAfter"] = _rfc3339(request.not_after)
        elif self.config.cert_lifetime_days:
            validity["notAfter"] = _rfc3339(utcnow() + dt.timedelta(days=self.config.cert_lifetime_days))
        return validity

    async def _order(self, journal: Journal) -> tuple[messages.Order, UpstreamResponse]:
        url = journal.entry.url
        if url is None:
            raise OrderLost()
        try:
            response, _ = await self.signed(url, None)
        except AcmeProblem as problem:
            if problem.status == 404 or problem.code == "unauthorized":
                raise OrderLost() from None
            raise self.mapped(problem, "order") from None
        return messages.Order.from_json(response.json()), response

    async def _order_lost(self, journal: Journal) -> None:
        entry = journal.entry
        if entry.finalized_at is not None:
            raise UpstreamRejected(
                upstream_problem(
                    self.name,
                    "serverInternal",
                    f"lost order {entry.url} after it was finalized; "
                    "acme-ra does not order again, as that could issue a second certificate",
                )
            )
        log.warning(
            "upstream order lost before finalize; creating another",
            extra={"upstream": self.name, "upstream_order": entry.url},
        )
        await journal.save(state=State.creating.value, url=None, finalize_url=None)

    async def _advance_pending(
        self, journal: Journal, csr: x509.CertificateSigningRequest, deadline: float, known: messages.Order | None
    ) -> float | None:
        """Authorize, then finalize; returns the finalize answer's Retry-After, if any."""
        if known is not None:
            order = known
        else:
            order, _ = await self._order(journal)
        status = order.status.name
        if status == "pending":
            await self.authorizer.authorize(order, deadline, journal)
            # Every authorization is valid now, so the order is ready (RFC 8555 §7.1.6); an
            # upstream that lags answers orderNotReady and the order is looked at again.
            status = "ready"
        if status == "ready":
            await self.authorizer.remove_records(journal)  # left by a signer that died after the verdict
            # Recorded before finalize: from here on this upstream order is never replaced.
            first = journal.entry.finalized_at is None
            await journal.save(state=State.finalizing.value, finalized_at=journal.entry.finalized_at or utcnow())
            return await self._send_finalize(journal, csr, order, first=first)
        await self._follow(journal, order)
        return None

    async def _finalize(self, journal: Journal, csr: x509.CertificateSigningRequest, deadline: float) -> float | None:
        """Resume an order recorded as finalizing: finalize unless the upstream already took it."""
        order, response = await self._order(journal)
        if order.status.name == "ready":
            return await self._send_finalize(journal, csr, order)
        if order.status.name == "pending":  # not ready (yet): authorize again after a pause
            await self.wait(retry_after_seconds(response), 0, deadline, "authorizing")
            await journal.save(state=State.pending.value)
        else:
            await self._follow(journal, order)  # the finalize sent before a crash was taken
        return None

    async def _send_finalize(
        self, journal: Journal, csr: x509.CertificateSigningRequest, order: messages.Order, first: bool = False
    ) -> float | None:
        finalize_url = journal.entry.finalize_url or order.finalize
        try:
            response, _ = await self.signed(finalize_url, messages.CertificateRequest(csr=csr))
        except RequestNotSent:
            if first:
                # The first finalize of this order never left (no connection): the upstream
                # cannot have issued, so the record says so again and the order may still move
                # to another upstream (failover). A finalize sent before is never undone here.
                await journal.save(state=State.pending.value, finalized_at=None)
            raise
        except AcmeProblem as problem:
            if problem.code == "orderNotReady":
                return None  # state stays finalizing: the next step looks at the order again
            raise self.mapped(problem, "finalize") from None
        await self._follow(journal, messages.Order.from_json(response.json()))
        return retry_after_seconds(response)

    async def _follow(self, journal: Journal, order: messages.Order) -> None:
        """Record what the upstream says of a finalized order."""
        status = order.status.name
        if status == "valid" and order.certificate:
            # What is left, the download, is idempotent: any signer may do it, without the lease.
            await journal.finish(state=State.valid.value, certificate_url=order.certificate, error=None)
        elif status in ("processing", "valid"):
            if journal.entry.state != State.processing.value:
                # No step depends on it (resuming "finalizing" also looks at the order first):
                # written with the next record, or with a renewal of the lease during a long wait.
                journal.note(state=State.processing.value)
        elif status == "invalid":
            error = order.error
            detail = (error.detail or error.typ) if error else "the upstream order became invalid"
            code = (error.code if error else None) or "serverInternal"
            raise UpstreamRejected(upstream_problem(self.name, code if code in STATUS_BY_TYPE else "serverInternal", detail))
        else:
            raise UpstreamUnavailable(said_by(self.name, f"unexpected order status {status!r}"))

    async def _await_certificate(self, journal: Journal, deadline: float) -> None:
        attempt = 0
        while journal.entry.state == State.processing.value:
            order, response = await self._order(journal)
            if order.status.name == "processing" or (order.status.name == "valid" and not order.certificate):
                await journal.renew()
                await self.wait(retry_after_seconds(response), attempt, deadline, "signing")
                await journal.renew()
                attempt += 1
                continue
            if order.status.name in ("ready", "pending"):
                # The finalize sent before a crash never arrived: finalize (this same order) again.
                await journal.save(state=State.finalizing.value)
                return
            await self._follow(journal, order)

    async def wait(self, retry_after: float | None, attempt: int, deadline: float, what: str) -> None:
        delay = poll_delay(retry_after, attempt)
        if time.monotonic() + delay > deadline:
            raise UpstreamUnavailable(
                said_by(self.name, f"still {what} after {self.order_timeout:.0f}s; the job resumes it later")
            )
        await asyncio.sleep(delay)

    async def _download(self, journal: Journal, csr: x509.CertificateSigningRequest) -> IssuedChain:
        url = journal.entry.certificate_url
        assert url is not None
        try:
            response, _ = await self.signed(url, None, accept=PEM_CHAIN)
        except AcmeProblem as problem:
            if problem.status == 404:
                # Issued, then forgotten (a CA that lost its state): as for a lost finalized order.
                raise UpstreamRejected(
                    upstream_problem(
                        self.name,
                        "serverInternal",
                        f"lost certificate {url} of a finalized order; "
                        "acme-ra does not order again, as that could issue a second certificate",
                    )
                ) from None
            raise self.mapped(problem, "certificate download") from None
        certs = _parse_chain(response.content, self.name)
        leaf = certs[0]
        if leaf.public_key() != csr.public_key():
            raise UpstreamRejected(
                upstream_problem(self.name, "serverInternal", "returned a certificate for another key")
            )
        alternates: list[str] = []
        for alternate_url in link_urls(response, "alternate"):
            try:
                alternate, _ = await self.signed(alternate_url, None, accept=PEM_CHAIN)
                chain = _parse_chain(alternate.content, self.name)
            except (AcmeProblem, UpstreamError) as error:
                log.warning(
                    "alternate chain not fetched: %s", error, extra={"upstream": self.name, "url": alternate_url}
                )
                continue
            if chain[0] == leaf:
                alternates.append(_pem(chain))
        return IssuedChain(
            chain_pem=_pem(certs),
            serial_hex=format(leaf.serial_number, "x"),
            not_before=leaf.not_valid_before_utc,
            not_after=leaf.not_valid_after_utc,
            alternate_chains_pem=tuple(alternates),
        )

    # Revocation and readiness --------------------------------------------------------------------

    async def revoke(self, cert_der: bytes, reason: int) -> None:
        try:
            directory = await self.client.directory()
        except UpstreamUnavailable:
            self._checked_at = -1e9
            raise
        try:
            cert = x509.load_der_x509_certificate(cert_der)
        except ValueError:
            raise UpstreamRejected({"type": "malformed", "detail": "not a DER certificate"}) from None
        try:
            await self.signed(directory["revokeCert"], messages.Revocation(certificate=cert, reason=reason))
        except AcmeProblem as problem:
            if problem.code == "alreadyRevoked":
                return
            raise self.mapped(problem, "revokeCert") from None
        log.info(
            "certificate revoked upstream",
            extra={"upstream": self.name, "serial": format(cert.serial_number, "x"), "reason": reason},
        )

    async def renewal_info(self, leaf: x509.Certificate) -> RenewalInfo | None:
        return await renewal_info.fetch(self.client, leaf, self.name)

    def offers_renewal_info(self) -> bool:
        return self.client.offers("renewalInfo")

    def describe(self) -> dict[str, Any]:
        return self.config.describe()

    async def close(self) -> None:
        await self.client.close()

    async def check(self) -> None:
        """The directory answers and the account is registered and valid (cached when good)."""
        if time.monotonic() - self._checked_at < CHECK_CACHE_SECONDS:
            return
        await self.client.directory(refresh=True)
        account = await self.accounts.current()
        if not await self.accounts.is_valid(account):
            account = await self.accounts.replace(account)
            if not await self.accounts.is_valid(account):
                raise UpstreamUnavailable(said_by(self.name, f"account {account.url} is not valid"))
        self._checked_at = time.monotonic()


def _rfc3339(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_chain(content: bytes, upstream: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(content)
    except ValueError:
        certs = []
    if not certs:
        raise UpstreamUnavailable(said_by(upstream, "the certificate URL returned no PEM chain"))
    return certs


def _pem(certs: list[x509.Certificate]) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)
