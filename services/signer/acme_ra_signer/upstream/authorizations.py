"""How acme-ra proves the names of an upstream order's pending authorizations: by the
upstream's ``authz_strategy``, one entry of ``STRATEGIES`` each (the one place that dispatches)::

    prevalidated  the CA validated the domain beforehand; a pending challenge is POSTed once
    dns-01        the signer publishes the TXT records (``upstream/dns01.py``), then answers
    http-01       the frontends serve the key authorizations (``upstream/http01.py``), then answers
    dns-persist-01  a standing record the operator published once (``upstream/dns_persist.py``):
                  the challenge is POSTed as for prevalidated

A new strategy is a module with a ``Prove`` function and one line in ``STRATEGIES`` (and its name
in ``acme_config.AUTHZ_STRATEGIES``, which configuration checks against).

Whatever a strategy publishes is recorded before it is published and removed whatever the
outcome (``Authorizer.remove_records``; after a crash, by the next attempt on the order).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from acme import messages

from acme_ra.db.engine import Database
from acme_ra_signer import metrics
from acme_ra_signer.upstream import dns01, dns_persist, http01
from acme_ra_signer.upstream.acme_client import AcmeProblem, OrderLost, UpstreamResponse, retry_after_seconds
from acme_ra_signer.upstream.base import UpstreamError, UpstreamRejected, upstream_problem
from acme_ra_signer.upstream.journal import Journal
from acme_ra_signer.upstream.polling import poll_delay

if TYPE_CHECKING:
    from acme_ra_signer.upstream.acme import AcmeUpstream

log = logging.getLogger("acme_ra_signer.upstream.authorizations")

# (authorization URL, its pending challenge of the strategy's type)
Challenge = tuple[str, messages.ChallengeBody]
# (authorization URL, the pending authorization)
Pending = tuple[str, messages.Authorization]
Prove = Callable[["Authorizer", list[Challenge], list[Pending], float, Journal], Awaitable[None]]


@dataclass(frozen=True)
class Strategy:
    """One ``authz_strategy``: the challenge type it answers (None: the upstream's
    ``challenge_type`` setting), whether it can prove a wildcard, and how it proves."""

    challenge_type: str | None
    prove: Prove
    wildcards: bool = True


class Authorizer:
    """Proves the names of one ACME upstream's pending authorizations."""

    def __init__(self, upstream: AcmeUpstream, db: Database) -> None:
        self.upstream = upstream
        self.config = upstream.config
        self.name = upstream.name
        self.strategy = STRATEGIES[self.config.authz_strategy]
        self.dns01 = dns01.Dns01(self.config) if self.config.authz_strategy == "dns-01" else None
        self.http01 = http01.KeyAuthorizations(db, self.config) if self.config.authz_strategy == "http-01" else None

    async def authorize(self, order: messages.Order, deadline: float, journal: Journal) -> None:
        """Skip valid authorizations; satisfy the pending ones by ``authz_strategy``."""
        pending: list[Pending] = []
        for url in order.authorizations:
            authz = await self.authorization(url)
            status = authz.status.name
            if status == "valid":
                continue
            if status != "pending":
                raise UpstreamRejected(self._not_validated(authz, url, status))
            pending.append((url, authz))
        if not pending:
            return
        challenges = [(url, self._challenge(authz, url)) for url, authz in pending]
        await self.strategy.prove(self, challenges, pending, deadline, journal)

    def _challenge(self, authz: messages.Authorization, url: str) -> messages.ChallengeBody:
        wanted = self.strategy.challenge_type or self.config.challenge_type
        if authz.wildcard and not self.strategy.wildcards:
            raise UpstreamRejected(
                {
                    "type": "rejectedIdentifier",
                    "detail": f"upstream \"{self.name}\": validates the wildcard {identifier(authz, url)} "
                    f"only by dns-01, and {self.config.setting('authz_strategy')}={self.config.authz_strategy}: "
                    "acme-ra cannot prove it (set authz_strategy dns-01 for this upstream, or order without "
                    "the wildcard)",
                }
            )
        challenge = next((c for c in authz.challenges if dns_persist.challenge_type(c) == wanted), None)
        if challenge is None:
            offered = ", ".join(dns_persist.challenge_type(c) for c in authz.challenges) or "none"
            raise UpstreamRejected(
                upstream_problem(
                    self.name,
                    "unauthorized",
                    f"offers no {wanted} challenge for {identifier(authz, url)} (it offers {offered}; "
                    f"{self.config.setting('authz_strategy')}={self.config.authz_strategy})",
                )
            )
        return challenge

    def validated(self, method: str, outcome: str, authorizations: int, elapsed: float) -> None:
        """Count and time one upstream validation; one log event each (what
        `python -m bench --upstream-validation` reads)."""
        metrics.UPSTREAM_VALIDATIONS.labels(self.name, method, outcome).inc()
        metrics.UPSTREAM_VALIDATION_SECONDS.labels(self.name, method).observe(elapsed)
        log.info("upstream validation", extra={"upstream": self.name, "method": method, "outcome": outcome,
                                               "authorizations": authorizations,
                                               "duration_ms": round(1000 * elapsed, 1)})

    async def remove_records(self, journal: Journal) -> None:
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

    async def answer(self, challenges: list[Challenge], deadline: float, journal: Journal) -> None:
        """POST each pending challenge once, then poll its authorization until it is settled."""
        for _, challenge in challenges:
            if challenge.status.name == "pending":
                try:
                    await self.upstream.signed(challenge.uri, {})
                except AcmeProblem as problem:
                    raise self.upstream.mapped(problem, "challenge") from None
        limit = min(deadline, time.monotonic() + self.config.validation_timeout_seconds)
        for url, _ in challenges:
            attempt = 0
            while True:
                authz, response = await self.authorization_with_response(url)
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
                            f"did not validate {identifier(authz, url)} within "
                            f"{self.config.validation_timeout_seconds:.0f}s (the authorization is still {status}; "
                            f"{self.config.setting('validation_timeout_seconds')})",
                        )
                    )
                await self.upstream.wait(retry_after_seconds(response), attempt, deadline, "validating")
                await journal.renew()
                attempt += 1

    def _not_validated(self, authz: messages.Authorization, url: str, status: str) -> dict[str, str]:
        errors = [c.error.detail or c.error.typ for c in authz.challenges if c.error is not None]
        said = "; ".join(errors) or f"the authorization is {status}"
        detail = f"did not validate {identifier(authz, url)}: {said}"
        if self.config.authz_strategy == "prevalidated":
            detail += (
                f" (with {self.config.setting('authz_strategy')}=prevalidated acme-ra proves nothing itself: "
                "have the CA pre-validate the domain, or set authz_strategy dns-01 or http-01)"
            )
        elif self.config.authz_strategy == dns_persist.STRATEGY:
            detail += dns_persist.failure_hint(identifier(authz, url))
        return upstream_problem(self.name, "unauthorized", detail)

    async def authorization(self, url: str) -> messages.Authorization:
        return (await self.authorization_with_response(url))[0]

    async def authorization_with_response(self, url: str) -> tuple[messages.Authorization, UpstreamResponse]:
        try:
            response, _ = await self.upstream.signed(url, None)
        except AcmeProblem as problem:
            if problem.status == 404:
                raise OrderLost() from None
            raise self.upstream.mapped(problem, "authorization") from None
        return messages.Authorization.from_json(response.json()), response


async def prove_prevalidated(
    authorizer: Authorizer, challenges: list[Challenge], pending: list[Pending], deadline: float, journal: Journal
) -> None:
    """The CA validated the domain beforehand: answer what is pending, once."""
    await authorizer.answer(challenges, deadline, journal)


async def prove_dns01(
    authorizer: Authorizer, challenges: list[Challenge], pending: list[Pending], deadline: float, journal: Journal
) -> None:
    """Publish the TXT records, wait until the nameservers show them, answer, remove them."""
    assert authorizer.dns01 is not None
    account = await authorizer.upstream.accounts.current()
    wanted_records: set[dns01.Record] = set()
    for (url, challenge), (_, authz) in zip(challenges, pending, strict=True):
        owner = await authorizer.dns01.lookup.owner(dns01.challenge_name(identifier(authz, url)))
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
            await authorizer.dns01.publish(records)
        except dns01.DnsConfigProblem:
            await journal.save(dns_records=None)  # refused: nothing was published
            raise
        await authorizer.dns01.wait_visible(records, deadline)
        await authorizer.answer(challenges, deadline, journal)
        outcome = "valid"
    finally:
        authorizer.validated("dns-01", outcome, len(challenges), time.monotonic() - started)
        await authorizer.remove_records(journal)


async def prove_http01(
    authorizer: Authorizer, challenges: list[Challenge], pending: list[Pending], deadline: float, journal: Journal
) -> None:
    """Store the key authorizations the frontends serve, then answer; the rows are deleted
    whatever the outcome (and, after a crash, by the next attempt)."""
    assert authorizer.http01 is not None
    account = await authorizer.upstream.accounts.current()
    items: list[http01.KeyAuthorization] = []
    for (url, challenge), (_, authz) in zip(challenges, pending, strict=True):
        token = challenge.chall.encode("token")
        name = identifier(authz, url)
        http01.check_token(token, name, authorizer.config)
        items.append(http01.KeyAuthorization(token, name, http01.key_authorization(token, account.key.jwk)))
    expiries = [authz.expires for _, authz in pending if authz.expires is not None]
    # Written before the challenges are POSTed: a signer that dies from here on leaves rows
    # that the next attempt on this order deletes (and that expire meanwhile).
    await authorizer.http01.publish(journal.order_id, items, authorizer.http01.expiry(min(expiries, default=None)))
    started = time.monotonic()
    outcome = "failed"
    try:
        await authorizer.answer(challenges, deadline, journal)
        outcome = "valid"
    finally:
        authorizer.validated("http-01", outcome, len(challenges), time.monotonic() - started)
        await authorizer.remove_records(journal)


# authz_strategy -> how it proves: the one dispatch (acme_config.AUTHZ_STRATEGIES lists the keys).
STRATEGIES: dict[str, Strategy] = {
    "prevalidated": Strategy(None, prove_prevalidated),
    "dns-01": Strategy("dns-01", prove_dns01),
    "http-01": Strategy("http-01", prove_http01, wildcards=False),
    dns_persist.STRATEGY: Strategy(dns_persist.STRATEGY, prove_prevalidated),
}


def identifier(authz: messages.Authorization, url: str) -> str:
    """The authorization's name as the client asked it (``*.`` for a wildcard)."""
    if authz.identifier is None:
        return url
    return f"*.{authz.identifier.value}" if authz.wildcard else authz.identifier.value
