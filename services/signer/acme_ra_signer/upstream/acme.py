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
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from typing import Any

import httpx
from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select

from acme_ra.config import Settings
from acme_ra.db.engine import Database
from acme_ra.db.models import UpstreamOrder, UpstreamOrderState, utcnow
from acme_ra.protocol.problems import STATUS_BY_TYPE
from acme_ra.sealing import Sealer
from acme_ra_signer import metrics
from acme_ra_signer.upstream import dns01, dns_persist, http01
from acme_ra_signer.upstream.accounts import Account, AccountStore
from acme_ra_signer.upstream.acme_client import (
    PEM_CHAIN,
    AcmeClient,
    AcmeProblem,
    UpstreamResponse,
    link_urls,
    retry_after_seconds,
)
from acme_ra_signer.upstream.base import (
    IssuedChain,
    IssueRequest,
    NamedUpstream,
    RequestNotSent,
    UpstreamDriver,
    UpstreamError,
    UpstreamRejected,
    UpstreamUnavailable,
    said_by,
    upstream_problem,
)
from acme_ra_signer.upstream.breaker import Breaker
from acme_ra_signer.upstream.catalog import AnyUpstream, Catalog, Upstream, load_catalog, sealing_secret
from acme_ra_signer.upstream.journal import LEASE_SECONDS, DbJournal, Journal, LeaseLost, UpstreamBusy

log = logging.getLogger("acme_ra_signer.upstream.acme")

State = UpstreamOrderState
# Polling without a Retry-After: first wait, growth factor, longest wait (seconds). The first
# wait is short because a CA that answers finalize with "processing" (Pebble, step-ca) mostly has
# the certificate a few milliseconds later; doubling from 50 ms, a CA that takes seconds costs only
# two or three polls more than doubling from 250 ms did (waits 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, ...).
POLL_FIRST_SECONDS = 0.05
POLL_FACTOR = 2.0
POLL_MAX_SECONDS = 15.0
# A Retry-After shorter than the backoff above is raised to it, but never beyond this (seconds).
# Retry-After counts whole seconds, so the floor changes only "0" and dates less than a second
# away, which mean "now": a CA repeating them is polled on the backoff (settling at one poll a
# second), not in a tight loop; any Retry-After of a second or more is honoured as given.
RETRY_AFTER_FLOOR_MAX_SECONDS = 1.0
# The longest Retry-After honoured as is (seconds); longer ones hand the job back to the queue.
RETRY_AFTER_MAX_SECONDS = 300.0
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


class OrderLost(Exception):
    """The upstream does not know the recorded order any more."""


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
        self.dns01 = dns01.Dns01(upstream) if upstream.authz_strategy == "dns-01" else None
        self.http01 = http01.KeyAuthorizations(db, upstream) if upstream.authz_strategy == "http-01" else None
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
            await self._remove_records(journal)
        for _ in range(MAX_STEPS):
            state = journal.entry.state
            try:
                if state == State.creating.value:
                    known = await self._create_order(request, journal)
                elif state == State.pending.value:
                    retry_after = await self._advance_pending(journal, csr, deadline, known)
                    known = None
                    if retry_after is not None and journal.entry.state == State.processing.value:
                        await self._wait(retry_after, 0, deadline, "signing")
                elif state == State.finalizing.value:
                    retry_after = await self._finalize(journal, csr, deadline)
                    if retry_after is not None and journal.entry.state == State.processing.value:
                        await self._wait(retry_after, 0, deadline, "signing")
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
                await self._remove_records(journal)
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
            await self._authorize(order, deadline, journal)
            # Every authorization is valid now, so the order is ready (RFC 8555 §7.1.6); an
            # upstream that lags answers orderNotReady and the order is looked at again.
            status = "ready"
        if status == "ready":
            await self._remove_records(journal)  # left by a signer that died after the verdict
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
            await self._wait(retry_after_seconds(response), 0, deadline, "authorizing")
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
                await self._wait(retry_after_seconds(response), attempt, deadline, "signing")
                await journal.renew()
                attempt += 1
                continue
            if order.status.name in ("ready", "pending"):
                # The finalize sent before a crash never arrived: finalize (this same order) again.
                await journal.save(state=State.finalizing.value)
                return
            await self._follow(journal, order)

    async def _authorize(self, order: messages.Order, deadline: float, journal: Journal) -> None:
        """Skip valid authorizations; satisfy the pending ones by ``authz_strategy``."""
        pending: list[tuple[str, messages.Authorization]] = []
        for url in order.authorizations:
            authz = await self._authorization(url)
            status = authz.status.name
            if status == "valid":
                continue
            if status != "pending":
                raise UpstreamRejected(self._not_validated(authz, url, status))
            pending.append((url, authz))
        if not pending:
            return
        strategy = self.config.authz_strategy
        wanted = strategy if strategy in ("dns-01", "http-01", dns_persist.STRATEGY) else self.config.challenge_type
        challenges: list[tuple[str, messages.ChallengeBody]] = []
        for url, authz in pending:
            if strategy == "http-01" and authz.wildcard:
                raise UpstreamRejected(
                    {
                        "type": "rejectedIdentifier",
                        "detail": f"upstream \"{self.name}\": validates the wildcard {_identifier(authz, url)} "
                        f"only by dns-01, and {self.config.setting('authz_strategy')}=http-01: acme-ra cannot "
                        "prove it (set authz_strategy dns-01 for this upstream, or order without the wildcard)",
                    }
                )
            challenge = next((c for c in authz.challenges if dns_persist.challenge_type(c) == wanted), None)
            if challenge is None:
                offered = ", ".join(dns_persist.challenge_type(c) for c in authz.challenges) or "none"
                raise UpstreamRejected(
                    upstream_problem(
                        self.name,
                        "unauthorized",
                        f"offers no {wanted} challenge for {_identifier(authz, url)} (it offers {offered}; "
                        f"{self.config.setting('authz_strategy')}={self.config.authz_strategy})",
                    )
                )
            challenges.append((url, challenge))
        if self.http01 is not None:
            await self._serve_key_authorizations(challenges, pending, deadline, journal)
            return
        if self.dns01 is None:
            await self._answer(challenges, deadline, journal)
            return
        account = await self.accounts.current()
        wanted_records: set[dns01.Record] = set()
        for (url, challenge), (_, authz) in zip(challenges, pending, strict=True):
            owner = await self.dns01.lookup.owner(dns01.challenge_name(_identifier(authz, url)))
            wanted_records.add((owner, dns01.txt_value(challenge.chall.encode("token"), account.key.jwk)))
        records = sorted(wanted_records)
        # Recorded before publishing: a signer that dies from here on leaves what the next removes.
        # With what a dead signer recorded: its records for authorizations valid since stay too.
        left = {(fqdn, value) for fqdn, value in journal.entry.dns_records or ()}
        await journal.save(dns_records=[list(record) for record in sorted(left | wanted_records)])
        started = time.monotonic()
        outcome = "failed"
        try:
            try:
                await self.dns01.publish(records)
            except dns01.DnsConfigProblem:
                await journal.save(dns_records=None)  # refused: nothing was published
                raise
            await self.dns01.wait_visible(records, deadline)
            await self._answer(challenges, deadline, journal)
            outcome = "valid"
        finally:
            self._validated("dns-01", outcome, len(challenges), time.monotonic() - started)
            await self._remove_records(journal)

    async def _serve_key_authorizations(
        self,
        challenges: list[tuple[str, messages.ChallengeBody]],
        pending: list[tuple[str, messages.Authorization]],
        deadline: float,
        journal: Journal,
    ) -> None:
        """http-01: store the key authorizations the frontends serve, then answer; the rows are
        deleted whatever the outcome (and, after a crash, by the next attempt)."""
        assert self.http01 is not None
        account = await self.accounts.current()
        items: list[http01.KeyAuthorization] = []
        for (url, challenge), (_, authz) in zip(challenges, pending, strict=True):
            token = challenge.chall.encode("token")
            name = _identifier(authz, url)
            http01.check_token(token, name, self.config)
            items.append(http01.KeyAuthorization(token, name, http01.key_authorization(token, account.key.jwk)))
        expiries = [authz.expires for _, authz in pending if authz.expires is not None]
        # Written before the challenges are POSTed: a signer that dies from here on leaves rows
        # that the next attempt on this order deletes (and that expire meanwhile).
        await self.http01.publish(journal.order_id, items, self.http01.expiry(min(expiries, default=None)))
        started = time.monotonic()
        outcome = "failed"
        try:
            await self._answer(challenges, deadline, journal)
            outcome = "valid"
        finally:
            self._validated("http-01", outcome, len(challenges), time.monotonic() - started)
            await self._remove_records(journal)

    def _validated(self, method: str, outcome: str, authorizations: int, elapsed: float) -> None:
        """Count and time one upstream validation; one log event each (what
        `python -m bench --upstream-validation` reads)."""
        metrics.UPSTREAM_VALIDATIONS.labels(self.name, method, outcome).inc()
        metrics.UPSTREAM_VALIDATION_SECONDS.labels(self.name, method).observe(elapsed)
        log.info("upstream validation", extra={"upstream": self.name, "method": method, "outcome": outcome,
                                               "authorizations": authorizations,
                                               "duration_ms": round(1000 * elapsed, 1)})

    async def _remove_records(self, journal: Journal) -> None:
        """Remove what was published for the upstream's challenges: the order's http-01 key
        authorizations, the dns-01 records the journal holds (also those a dead signer left)."""
        if self.http01 is not None:
            await self.http01.remove(journal.order_id)
        recorded = journal.entry.dns_records
        if not recorded or self.dns01 is None:
            return
        records = [(fqdn, value) for fqdn, value in recorded]
        try:
            await self.dns01.remove(records)
        except UpstreamError as error:
            # Kept in the journal: the next attempt on this order removes them.
            log.warning("dns-01 records not removed: %s", error, extra={"upstream": self.name})
            return
        await journal.save(dns_records=None)
        log.info("dns-01 records removed", extra={"upstream": self.name, "records": [r[0] for r in records]})

    async def _answer(
        self, challenges: list[tuple[str, messages.ChallengeBody]], deadline: float, journal: Journal
    ) -> None:
        """POST each pending challenge once, then poll its authorization until it is settled."""
        for _, challenge in challenges:
            if challenge.status.name == "pending":
                try:
                    await self.signed(challenge.uri, {})
                except AcmeProblem as problem:
                    raise self.mapped(problem, "challenge") from None
        limit = min(deadline, time.monotonic() + self.config.validation_timeout_seconds)
        for url, _ in challenges:
            attempt = 0
            while True:
                authz, response = await self._authorization_with_response(url)
                status = authz.status.name
                if status == "valid":
                    break
                if status != "pending":
                    raise UpstreamRejected(self._not_validated(authz, url, status))
                if limit < deadline and time.monotonic() + poll_delay(retry_after_seconds(response), attempt) > limit:
                    raise UpstreamRejected(
                        upstream_problem(
                            self.name,
                            "unauthorized",
                            f"did not validate {_identifier(authz, url)} within "
                            f"{self.config.validation_timeout_seconds:.0f}s (the authorization is still {status}; "
                            f"{self.config.setting('validation_timeout_seconds')})",
                        )
                    )
                await self._wait(retry_after_seconds(response), attempt, deadline, "validating")
                await journal.renew()
                attempt += 1

    def _not_validated(self, authz: messages.Authorization, url: str, status: str) -> dict[str, str]:
        errors = [c.error.detail or c.error.typ for c in authz.challenges if c.error is not None]
        said = "; ".join(errors) or f"the authorization is {status}"
        detail = f"did not validate {_identifier(authz, url)}: {said}"
        if self.config.authz_strategy == "prevalidated":
            detail += (
                f" (with {self.config.setting('authz_strategy')}=prevalidated acme-ra proves nothing itself: "
                "have the CA pre-validate the domain, or set authz_strategy dns-01 or http-01)"
            )
        elif self.config.authz_strategy == dns_persist.STRATEGY:
            detail += dns_persist.failure_hint(_identifier(authz, url))
        return upstream_problem(self.name, "unauthorized", detail)

    async def _authorization(self, url: str) -> messages.Authorization:
        return (await self._authorization_with_response(url))[0]

    async def _authorization_with_response(self, url: str) -> tuple[messages.Authorization, UpstreamResponse]:
        try:
            response, _ = await self.signed(url, None)
        except AcmeProblem as problem:
            if problem.status == 404:
                raise OrderLost() from None
            raise self.mapped(problem, "authorization") from None
        return messages.Authorization.from_json(response.json()), response

    async def _wait(self, retry_after: float | None, attempt: int, deadline: float, what: str) -> None:
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


class AcmeDriver(UpstreamDriver):
    """Every configured upstream (ACME CAs, and the other ``type``s: vault, command, lab); each
    order goes to the first of the ordered list its profile or provisioner selects whose
    circuit breaker lets it through, and stays with it (the journal records the name) unless
    that upstream becomes unavailable before anything was finalized there: then it moves to
    the next one (failover). A finalized order never moves."""

    name = "acme"

    def __init__(
        self,
        catalog: Catalog,
        db: Database,
        sealer: Sealer,
        *,
        http_timeout: float = 60.0,
        order_timeout: float = 600.0,
        proxy: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        self.catalog = catalog
        self.db = db
        self.lease_seconds = lease_seconds
        self.upstreams: dict[str, NamedUpstream] = {
            name: AcmeUpstream(
                config,
                db,
                sealer,
                AcmeClient(
                    config.directory_url,
                    ca_bundle=str(config.ca_bundle) if config.ca_bundle else None,
                    timeout=http_timeout,
                    proxy=proxy,
                    transport=transport,
                    upstream=name,
                ),
                order_timeout,
            )
            if isinstance(config, Upstream)
            else _other(config, http_timeout, proxy)
            for name, config in catalog.upstreams.items()
        }
        self.breakers = {name: Breaker(name) for name in catalog.upstreams}

    def describe(self) -> list[dict[str, Any]]:
        return [
            {**config.describe(), "breaker": self.breakers[name].describe()}
            for name, config in self.catalog.upstreams.items()
        ]

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        db: Database,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        lease_seconds: float = LEASE_SECONDS,
    ) -> AcmeDriver:
        """Raises ``catalog.UpstreamConfigError`` (one line) when the configuration is unusable."""
        catalog = load_catalog(settings)
        sealer = Sealer(sealing_secret(settings))
        return cls(
            catalog,
            db,
            sealer,
            http_timeout=settings.upstream_http_timeout_seconds,
            order_timeout=settings.upstream_order_timeout_seconds,
            proxy=settings.upstream_proxy or None,
            transport=transport,
            lease_seconds=lease_seconds,
        )

    def select(self, provisioner: str | None = None, profile: str | None = None) -> NamedUpstream:
        return self.upstreams[self.catalog.select(provisioner, profile).name]

    async def issue(self, request: IssueRequest) -> IssuedChain:
        candidates = self.catalog.candidates(request.provisioner, request.profile)
        async with DbJournal.claim(self.db, request.order_id, candidates[0], self.lease_seconds) as journal:
            # Each upstream at most once per job: a failover chain ends at the last candidate.
            tried: set[str] = set()
            admitted: set[str] = set()  # breakers that let this job through (a half-open one once)
            while True:
                name = journal.entry.upstream
                upstream = self.upstreams.get(name)
                if upstream is None:
                    raise UpstreamUnavailable(
                        f"order {request.order_id} is with upstream {name!r}, which is no longer configured"
                    )
                tried.add(name)
                if name not in admitted and not self.breakers[name].allow() and upstream.may_move(journal.entry):
                    target = self._next(candidates, tried, admitted)
                    if target is not None:
                        why = f"its circuit breaker is open ({self.breakers[name].last_error})"
                        await self._move(journal, upstream, target, why)
                        continue
                    # Every candidate is unavailable: try this one anyway (as with one upstream).
                try:
                    chain = await upstream.issue(request, journal)
                except (UpstreamBusy, LeaseLost):
                    raise
                except UpstreamUnavailable as error:
                    breaker = self.breakers[name]
                    breaker.failure(str(error) or type(error).__name__)
                    # The breaker decides, not one error: the order moves once it is open.
                    movable = breaker.state.name != "closed" and upstream.may_move(journal.entry)
                    target = self._next(candidates, tried, admitted) if movable else None
                    if target is not None:
                        await self._move(journal, upstream, target, str(error) or type(error).__name__)
                        continue
                    await _note_transient(journal, upstream.name, error)
                    raise
                except UpstreamRejected:
                    # The order's own fault (possibly decided without asking the upstream): it
                    # says nothing of the upstream's health; a probe it used goes to the next job.
                    self.breakers[name].release()
                    raise
                self.breakers[name].success()
                return chain

    def _next(self, candidates: tuple[str, ...], tried: set[str], admitted: set[str]) -> str | None:
        """The first candidate not tried yet in this job whose breaker lets a request through."""
        for name in candidates:
            if name not in tried and name in self.upstreams and self.breakers[name].allow():
                admitted.add(name)
                return name
        return None

    async def _move(self, journal: Journal, upstream: NamedUpstream, target: str, why: str) -> None:
        """Record that the order leaves ``upstream`` for ``target``, before anything is sent to
        ``target``: the upstream-order fields start afresh (``orders_created`` keeps counting).
        Only for an entry ``upstream.may_move``: an upstream order created there was never
        finalized, so it cannot issue; it is abandoned (it expires there, unfinalized)."""
        entry = journal.entry
        if entry.dns_records and isinstance(upstream, AcmeUpstream):
            await upstream._remove_records(journal)  # published for the abandoned order
        if entry.url is not None:
            log.warning(
                "upstream order abandoned, never finalized: the order moves to upstream %s",
                target,
                extra={"order_id": journal.order_id, "upstream": upstream.name, "upstream_order": entry.url},
            )
        await journal.save(
            upstream=target,
            state=State.creating.value,
            url=None,
            finalize_url=None,
            certificate_url=None,
            account_url=None,
            error=None,
        )
        metrics.UPSTREAM_FAILOVERS.labels(upstream.name, target).inc()
        log.warning(
            "order moves from upstream %s to %s: %s",
            upstream.name,
            target,
            why,
            extra={"order_id": journal.order_id, "from_upstream": upstream.name, "to_upstream": target},
        )

    async def revoke(self, cert_der: bytes, reason: int, order_id: str | None = None) -> None:
        name = self.catalog.default
        if order_id is not None:
            async with self.db.sessions() as session:
                recorded = (
                    await session.execute(select(UpstreamOrder.upstream).where(UpstreamOrder.order_id == order_id))
                ).scalar_one_or_none()
            name = recorded or name
        upstream = self.upstreams.get(name)
        if upstream is None:
            raise UpstreamRejected(
                {"type": "serverInternal", "detail": f"the certificate's upstream {name!r} is no longer configured"}
            )
        await upstream.revoke(cert_der, reason)

    async def check(self) -> None:
        """Ready while every route (default, each profile, each provisioner) has an upstream
        that answers. This is also the breakers' health probe: an open breaker's upstream is
        not asked (it counts as down) until its cool-down ends; then the check is its probe."""
        names = list(self.upstreams)
        results = await asyncio.gather(*(self._probe(name) for name in names), return_exceptions=True)
        failed = {name: r for name, r in zip(names, results, strict=True) if isinstance(r, BaseException)}
        if not failed:
            return
        routes = [self.catalog.defaults or (self.catalog.default,)]
        routes += [*self.catalog.by_profile.values(), *self.catalog.by_provisioner.values()]
        down = next((route for route in routes if all(name in failed for name in route)), None)
        if down is None:
            return
        error = failed[down[0]]
        if isinstance(error, UpstreamUnavailable):
            raise error
        raise UpstreamUnavailable(str(error) or type(error).__name__) from error

    async def _probe(self, name: str) -> None:
        breaker = self.breakers[name]
        if breaker.state.name != "closed" and not breaker.allow():
            raise UpstreamUnavailable(said_by(name, f"circuit breaker open: {breaker.last_error}"))
        try:
            await self.upstreams[name].check()
        except UpstreamUnavailable as error:
            breaker.failure(str(error) or type(error).__name__)
            raise
        breaker.success()

    async def close(self) -> None:
        for upstream in self.upstreams.values():
            await upstream.close()


def _other(config: AnyUpstream, http_timeout: float, proxy: str | None) -> NamedUpstream:
    """An upstream of another ``type`` (vault, command, lab), built by its own module."""
    assert not isinstance(config, Upstream)
    return config.build(http_timeout=http_timeout, proxy=proxy)


async def _note_transient(journal: Journal, upstream: str, error: UpstreamUnavailable) -> None:
    """Keep the last transient failure (network, account, DNS) with the upstream order: if the
    order is given up in the end (the reconciler's last re-publication), its problem carries it."""
    problem = upstream_problem(upstream, "serverInternal", str(error) or type(error).__name__)
    if journal.entry.state in (State.valid.value, State.invalid.value) or journal.entry.error == problem:
        return
    try:
        await journal.save(error=problem)
    except Exception as failed:  # noqa: BLE001 - the job is retried anyway; the error is logged
        log.warning("upstream failure not recorded: %s", failed, extra={"upstream": upstream})


def poll_delay(retry_after: float | None, attempt: int) -> float:
    """Seconds to wait before looking again at something the upstream is still working on:
    its ``Retry-After`` (floored, clamped), else an exponential backoff from the ``attempt``-th
    look (0 for the first)."""
    backoff = min(POLL_FIRST_SECONDS * POLL_FACTOR**attempt, POLL_MAX_SECONDS)
    if retry_after is None:
        return backoff
    return min(max(retry_after, min(backoff, RETRY_AFTER_FLOOR_MAX_SECONDS)), RETRY_AFTER_MAX_SECONDS)


def _identifier(authz: messages.Authorization, url: str) -> str:
    """The authorization's name as the client asked it (``*.`` for a wildcard)."""
    if authz.identifier is None:
        return url
    return f"*.{authz.identifier.value}" if authz.wildcard else authz.identifier.value


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
