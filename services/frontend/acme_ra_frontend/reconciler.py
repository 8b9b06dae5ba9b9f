"""Re-publishes jobs whose rows sit in ``processing`` past a deadline, a bounded number of times.

The database is written first and the job published second; if the publish is lost (NATS down,
a frontend killed between the two), the row stays ``processing`` and this loop publishes the job
again. Consumers are idempotent, so a job that was not lost after all only costs a no-op. Every
frontend replica runs it, every ``ACME_RA_RECONCILE_INTERVAL_SECONDS`` (default 15).

Nothing is retried for ever: each re-publication is counted in the row (``republished``) and
pushes its deadline back; a challenge or order whose job was published again
``ACME_RA_RECONCILE_MAX_REPUBLICATIONS`` times and is still stuck ends ``invalid`` with a
``serverInternal`` problem (its authorization and orders follow, as for any failed challenge).
A job that is merely waiting in a queue that has a backlog is not lost: while a consumer has
jobs not yet delivered, its kind is left alone (nothing published, nothing counted). The message
id carries the count, so replicas publishing the same re-publication are de-duplicated by
JetStream, and only one of them counts it (a conditional update on the count it read).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

from nats.js import JetStreamContext

from acme_ra import bus
from acme_ra.db.lifecycle import fail_order, finish_challenge
from acme_ra.db.models import utcnow
from acme_ra_frontend.repo import stuck_jobs as repo
from acme_ra_frontend.state import FrontendState

log = logging.getLogger("acme_ra.frontend.reconciler")

# A challenge processing this long without a result has its validation job published again.
# Not a crash's recovery (a job a killed validator or signer held is redelivered by JetStream
# one ack wait after its last heartbeat: bus.VALIDATE/ISSUE_ACK_WAIT_SECONDS, 10 s) but a lost
# publish's: past the longest a live check takes (the validator's VALIDATION_TIMEOUT_SECONDS,
# 45 s) after such a redelivery, so that a job still running is not published a second time.
CHALLENGE_DEADLINE = dt.timedelta(seconds=60)
# An order processing this long without a certificate has its issuance job published again;
# an upstream may take minutes, and a second job for a running issuance waits on its lease.
ORDER_DEADLINE = dt.timedelta(seconds=120)
# Most rows re-published (or given up) per pass and kind.
BATCH = 500
# Re-publications of one job before its challenge or order ends invalid: the setting
# ACME_RA_RECONCILE_MAX_REPUBLICATIONS (default 10: a validation is given up after about 11
# minutes, an issuance after about 22).


def given_up(what: str, times: int, last_failure: dict[str, Any] | None = None) -> dict[str, Any]:
    """The problem of a challenge or order whose job never completed, ``times`` re-publications on;
    an order's starts with the last failure its upstream reported (``upstream "x": ...``)."""
    detail = f"the {what} job was published {times + 1} times and never completed; it is not tried again"
    if last_failure and last_failure.get("detail"):
        detail = f"{last_failure['detail']} ({detail})"
    return {"type": "serverInternal", "detail": detail}


async def _has_backlog(js: JetStreamContext, durable: str) -> bool:
    """Whether the consumer holds jobs not yet delivered: then a row still processing may only be
    waiting its turn. False when nats-server does not tell (the jobs are then published anyway)."""
    try:
        info = await js.consumer_info(bus.JOBS_STREAM, durable)
    except Exception as error:  # noqa: BLE001 - no permission, NATS away: publish as before
        log.debug("consumer %s: no info (%s)", durable, error)
        return False
    return bool(info.num_pending)


async def reconcile_once(state: FrontendState) -> int:
    """One pass; returns how many jobs were published again or given up."""
    if not state.nc.is_connected:
        return 0  # nothing could be published: count nothing, give nothing up
    now = utcnow()
    limit = state.settings.reconcile_max_republications
    skip_challenges = await _has_backlog(state.js, bus.DURABLE_VALIDATOR)
    skip_orders = await _has_backlog(state.js, bus.DURABLE_SIGNER)
    async with state.db.transaction() as session:
        # No trace context for a challenge: a re-published validation starts its own trace.
        challenges = [] if skip_challenges else await repo.stuck_challenges(session, now - CHALLENGE_DEADLINE, BATCH)
        orders = [] if skip_orders else await repo.stuck_orders(session, now - ORDER_DEADLINE, BATCH)
        # Stuck after the last re-publication: given up, in this transaction.
        abandoned_challenges = abandoned_orders = 0
        authz_lifetime = dt.timedelta(seconds=state.settings.authz_lifetime_seconds)
        for challenge_id, times in challenges:
            if times >= limit:
                problem = given_up("validation", times)
                abandoned_challenges += await finish_challenge(session, challenge_id, problem, authz_lifetime) is not None
        for order_id, times, _, last_failure in orders:
            if times >= limit:
                abandoned_orders += await fail_order(session, order_id, given_up("issuance", times, last_failure))
    bumps: list[tuple[str, str, int]] = []
    published = {"challenges": 0, "orders": 0}
    try:
        for challenge_id, times in challenges:
            if times < limit:
                await bus.publish_job(state.js, bus.SUBJECT_VALIDATE, bus.ValidateJob(challenge_id=challenge_id),
                                      f"validate-{challenge_id}-r{times + 1}")
                bumps.append(("challenge", challenge_id, times))
                published["challenges"] += 1
        for order_id, times, traceparent, _ in orders:
            if times < limit:
                await bus.publish_job(state.js, bus.SUBJECT_ISSUE, bus.IssueJob(order_id=order_id),
                                      f"issue-{order_id}-r{times + 1}", traceparent)
                bumps.append(("order", order_id, times))
                published["orders"] += 1
    finally:
        # Only what was published counts (and waits a deadline again); another replica that
        # published the same re-publication (same message id, dropped by JetStream) counts nothing.
        if bumps:
            async with state.db.transaction() as session:
                await repo.count_republications(session, bumps, now)
    republished = len(bumps)
    if republished:
        log.warning("re-published stuck jobs", extra=published)
    if abandoned_challenges or abandoned_orders:
        log.warning("gave up stuck jobs", extra={"challenges": abandoned_challenges, "orders": abandoned_orders,
                                                 "republications": limit})
    return republished + abandoned_challenges + abandoned_orders


async def reconcile_forever(state: FrontendState) -> None:
    while True:
        await asyncio.sleep(state.settings.reconcile_interval_seconds)
        try:
            await reconcile_once(state)
        except Exception as error:  # noqa: BLE001 - NATS or the database down: next pass
            log.warning("reconcile pass failed: %s", error)
