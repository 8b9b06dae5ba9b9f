"""What the admin plane reports without changing anything: the signer and its upstreams, the
JetStream backlog, and the policy as configured (mixed into
:class:`acme_ra_admin.operations.AdminOperations`)."""

from __future__ import annotations

import contextlib
from typing import Any

import httpx
from nats.js.errors import NotFoundError

from acme_ra import bus
from acme_ra.config import Settings, http_base
from acme_ra.db import models
from acme_ra.db.engine import Database
from acme_ra.protocol.policy import parse_rules
from acme_ra_admin import repository, schemas
from acme_ra_admin.errors import Unavailable
from acme_ra_admin.natslink import NatsLink

# How long the signer's /readyz may take (seconds); it asks the upstream, so allow for that.
SIGNER_READY_TIMEOUT_SECONDS = 10.0


def _upstreams(described: list[dict[str, Any]], pending: dict[str, tuple[int, int]],
               failures: dict[str, models.UpstreamOrder]) -> list[schemas.Upstream]:
    """The upstreams the signer describes, then any other the journal names (one no longer
    configured, or all of them while the signer cannot be asked), by name."""
    config = {str(u["name"]): u for u in described}
    result = []
    for name in sorted(set(config) | set(pending) | set(failures)):
        strategy = config.get(name, {}).get("authz_strategy")
        dns_update = config.get(name, {}).get("dns_update")
        breaker = config.get(name, {}).get("breaker")
        orders, records = pending.get(name, (0, 0))
        failed = failures.get(name)
        result.append(schemas.Upstream(
            name=name,
            authz_strategy=strategy if isinstance(strategy, str) else None,
            dns_update=schemas.DnsUpdate.model_validate(dns_update) if isinstance(dns_update, dict) else None,
            validations_pending=orders,
            dns_records=records,
            breaker=schemas.UpstreamBreaker.model_validate(breaker) if isinstance(breaker, dict) else None,
            last_failure=None if failed is None else schemas.UpstreamFailure(
                order_id=failed.order_id,
                type=(failed.error or {}).get("type"),
                detail=(failed.error or {}).get("detail"),
                at=failed.updated_at,
            ),
        ))
    return result


class StatusOperations:
    """The read-only status reports of the admin plane."""

    settings: Settings
    db: Database
    nats: NatsLink

    # Upstream and queues --------------------------------------------------------------------

    async def upstream_status(self) -> schemas.UpstreamStatus:
        signer = await self.signer_status()
        async with self.db.transaction() as session:
            accounts = await repository.upstream_accounts(session)
            states = await repository.upstream_order_states(session)
            statuses = await repository.order_statuses(session)
            pending = await repository.upstream_validations_pending(session)
            failures = {row.upstream: row for row in await repository.upstream_last_failures(session)}
        return schemas.UpstreamStatus(
            upstream=self.settings.upstream,
            signer=signer,
            upstreams=_upstreams(signer.upstreams, pending, failures),
            accounts=[
                schemas.UpstreamAccount(
                    upstream=a.upstream, directory_url=a.directory_url, url=a.url, eab_kid=a.eab_kid,
                    registered_at=a.registered_at, registrations=a.registrations,
                )
                for a in accounts
            ],
            upstream_orders=states,
            orders=statuses,
        )

    async def signer_status(self) -> schemas.SignerStatus:
        url = http_base(self.settings.signer_listen) + "/readyz"
        try:
            async with httpx.AsyncClient(trust_env=False, timeout=SIGNER_READY_TIMEOUT_SECONDS) as client:
                response = await client.get(url)
        except httpx.HTTPError as error:
            return schemas.SignerStatus(url=url, reachable=False, ready=False,
                                        failed={"signer": str(error) or type(error).__name__})
        answer: Any = None
        with contextlib.suppress(ValueError):
            answer = response.json()
        body: dict[str, Any] = answer if isinstance(answer, dict) else {}  # a proxy may answer anything
        reported = body.get("failed")
        failed: dict[Any, Any] = reported if isinstance(reported, dict) else {}
        if response.status_code != 200 and not failed:
            failed = {"signer": f"HTTP {response.status_code}"}
        described: Any = None
        with contextlib.suppress(httpx.HTTPError, ValueError):
            async with httpx.AsyncClient(trust_env=False, timeout=SIGNER_READY_TIMEOUT_SECONDS) as client:
                described = (await client.get(http_base(self.settings.signer_listen) + "/upstreams")).json()
        described = described.get("upstreams") if isinstance(described, dict) else None
        return schemas.SignerStatus(url=url, reachable=True, ready=response.status_code == 200,
                                    failed={str(k): str(v) for k, v in failed.items()},
                                    upstreams=[u for u in described if isinstance(u, dict) and u.get("name")]
                                    if isinstance(described, list) else [])

    async def queue_status(self) -> schemas.QueueStatus:
        try:
            client = self.nats.require()
        except Unavailable as error:
            return schemas.QueueStatus(stream=bus.JOBS_STREAM, reachable=False, error=error.detail)
        js = client.jetstream()
        try:
            stream = await js.stream_info(bus.JOBS_STREAM)
            consumers = []
            for durable in (bus.DURABLE_VALIDATOR, bus.DURABLE_SIGNER):
                try:
                    info = await js.consumer_info(bus.JOBS_STREAM, durable)
                except NotFoundError:
                    continue
                consumers.append(schemas.Consumer(
                    name=durable, pending=info.num_pending or 0, ack_pending=info.num_ack_pending or 0,
                    redelivered=info.num_redelivered or 0, waiting=info.num_waiting or 0,
                ))
        except NotFoundError:
            return schemas.QueueStatus(stream=bus.JOBS_STREAM, reachable=True,
                                       error=f"stream {bus.JOBS_STREAM} does not exist yet (no service started?)")
        except Exception as error:  # noqa: BLE001 - reported, not raised
            return schemas.QueueStatus(stream=bus.JOBS_STREAM, reachable=False, error=str(error) or type(error).__name__)
        return schemas.QueueStatus(stream=bus.JOBS_STREAM, reachable=True,
                                   messages=stream.state.messages or 0, consumers=consumers)

    # Policy ---------------------------------------------------------------------------------

    async def policy(self) -> schemas.PolicyView:
        """The identifier policy and the client networks, read from the configuration now."""
        from acme_ra.client_networks import ClientNetworksError, load_client_networks

        settings = self.settings
        config_file = str(settings.config_file) if settings.config_file else None
        try:
            rules = load_client_networks(settings)
        except ClientNetworksError as error:
            networks = schemas.ClientNetworks(restricted=None, networks=[], config_file=config_file,
                                              error=str(error).removeprefix("acme-ra: "))
        else:
            networks = schemas.ClientNetworks(
                restricted=rules.restricted, config_file=config_file,
                networks=[schemas.ClientNetworkRule(**entry) for entry in rules.to_data()])
        return schemas.PolicyView(
            identifiers=schemas.IdentifierPolicy(allow=parse_rules(settings.policy_allow),
                                                 deny=parse_rules(settings.policy_deny),
                                                 wildcards=settings.policy_wildcards),
            client_networks=networks,
        )
