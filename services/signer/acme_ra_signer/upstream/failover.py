"""The driver of ``ACME_RA_UPSTREAM=acme``: every configured upstream (ACME CAs, and the other
``type``s: vault, command, lab), which one serves an order, and failover between them.

Each order goes to the first upstream of the ordered list its profile or provisioner selects
(``catalog.Catalog.candidates``) whose circuit breaker (``breaker.py``) lets it through, and
stays with it (the journal records the name) unless that upstream becomes unavailable before
anything was finalized there: then it moves to the next one. A finalized order never moves.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

import httpx
from cryptography import x509
from sqlalchemy import select

from acme_ra.config import Settings
from acme_ra.db.engine import Database
from acme_ra.db.models import UpstreamOrder, UpstreamOrderState
from acme_ra.sealing import Sealer
from acme_ra_signer import metrics
from acme_ra_signer.upstream.acme import AcmeUpstream
from acme_ra_signer.upstream.acme_client import AcmeClient
from acme_ra_signer.upstream.acme_config import Upstream
from acme_ra_signer.upstream.base import (
    IssuedChain,
    IssueRequest,
    NamedUpstream,
    RenewalInfo,
    UpstreamDriver,
    UpstreamRejected,
    UpstreamUnavailable,
    said_by,
    upstream_problem,
)
from acme_ra_signer.upstream.breaker import Breaker
from acme_ra_signer.upstream.catalog import AnyUpstream, Catalog, load_catalog, sealing_secret
from acme_ra_signer.upstream.journal import LEASE_SECONDS, DbJournal, Journal, LeaseLost, UpstreamBusy

log = logging.getLogger("acme_ra_signer.upstream.failover")

State = UpstreamOrderState


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
        self.sealer = sealer
        self.lease_seconds = lease_seconds
        self.http_timeout, self.order_timeout, self.proxy, self.transport = http_timeout, order_timeout, proxy, transport
        self.upstreams: dict[str, NamedUpstream] = {name: self._build(name, config)
                                                      for name, config in catalog.upstreams.items()}
        self.breakers = {name: Breaker(name) for name in catalog.upstreams}
        # Upstreams a reload removed or replaced: orders journaled there still resume there.
        self.retired: dict[str, NamedUpstream] = {}
        self.replaced: list[NamedUpstream] = []

    def _build(self, name: str, config: AnyUpstream) -> NamedUpstream:
        if not isinstance(config, Upstream):
            return _other(config, self.http_timeout, self.proxy)
        client = AcmeClient(config.directory_url, ca_bundle=str(config.ca_bundle) if config.ca_bundle else None,
                            timeout=self.http_timeout, proxy=self.proxy, transport=self.transport, upstream=name)
        return AcmeUpstream(config, self.db, self.sealer, client, self.order_timeout)

    def reload(self, catalog: Catalog) -> list[str]:
        """Serve ``catalog`` from now on (the signer's configuration watch): upstreams whose
        configuration is unchanged keep their driver, account and breaker; new or changed ones
        get new ones; a removed one serves only the orders already journaled there (resume,
        revoke). The next order of a profile follows its new list. Returns what changed."""
        changes: list[str] = []
        for name, config in catalog.upstreams.items():
            before = self.catalog.upstreams.get(name)
            if before == config and name in self.upstreams:
                continue
            if name in self.upstreams:
                self.replaced.append(self.upstreams[name])
            self.upstreams[name] = self._build(name, config)
            self.breakers[name] = Breaker(name)
            self.retired.pop(name, None)
            changes.append(f"{name}: {'changed' if before is not None else 'added'}")
        for name in [name for name in self.upstreams if name not in catalog.upstreams]:
            self.retired[name] = self.upstreams.pop(name)
            changes.append(f"{name}: removed (its journaled orders still resume there)")
        if catalog.by_profile != self.catalog.by_profile or catalog.by_provisioner != self.catalog.by_provisioner \
                or (catalog.defaults, catalog.default) != (self.catalog.defaults, self.catalog.default):
            changes.append("routes changed")
        self.catalog = catalog
        return changes

    def _named(self, name: str) -> NamedUpstream | None:
        """A configured upstream, or one a reload retired (for what is journaled there)."""
        return self.upstreams.get(name) or self.retired.get(name)

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
                upstream = self._named(name)
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
                return dataclasses.replace(chain, upstream=name)

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
            await upstream.authorizer.remove_records(journal)  # published for the abandoned order
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
        upstream = self._named(name)
        if upstream is None:
            raise UpstreamRejected(
                {"type": "serverInternal", "detail": f"the certificate's upstream {name!r} is no longer configured"}
            )
        await upstream.revoke(cert_der, reason)

    async def renewal_info(self, upstream: str, leaf: x509.Certificate) -> RenewalInfo | None:
        named = self._named(upstream)
        return None if named is None else await named.renewal_info(leaf)

    def offers_renewal_info(self, upstream: str) -> bool:
        named = self._named(upstream)
        return named is not None and named.offers_renewal_info()

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
        for upstream in [*self.upstreams.values(), *self.retired.values(), *self.replaced]:
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

