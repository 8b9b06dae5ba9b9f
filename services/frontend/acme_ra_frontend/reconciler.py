"""Re-publishes jobs whose rows sit in ``processing`` past a deadline.

The database is written first and the job published second; if the publish is lost (NATS down,
a frontend killed between the two), the row stays ``processing`` and this loop publishes the job
again. Consumers are idempotent, so a job that was not lost after all only costs a no-op. Every
frontend replica runs it; the message id carries a time bucket so that replicas publishing in the
same bucket are de-duplicated by JetStream.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from sqlalchemy import select

from acme_ra import bus
from acme_ra.db.models import Challenge, ChallengeStatus, Order, OrderStatus, utcnow
from acme_ra_frontend.state import FrontendState

log = logging.getLogger("acme_ra.frontend.reconciler")

# How often the loop looks (seconds).
RECONCILE_INTERVAL = 15
# A challenge processing this long without a result has its validation job published again.
# Not a crash's recovery (a job a killed validator or signer held is redelivered by JetStream
# one ack wait after its last heartbeat: bus.VALIDATE/ISSUE_ACK_WAIT_SECONDS, 10 s) but a lost
# publish's: past the longest a live check takes (the validator's VALIDATION_TIMEOUT_SECONDS,
# 45 s) after such a redelivery, so that a job still running is not published a second time.
CHALLENGE_DEADLINE = dt.timedelta(seconds=60)
# An order processing this long without a certificate has its issuance job published again;
# an upstream may take minutes, and a second job for a running issuance waits on its lease.
ORDER_DEADLINE = dt.timedelta(seconds=120)
# Most rows re-published per pass and kind.
BATCH = 500


async def reconcile_once(state: FrontendState) -> int:
    now = utcnow()
    bucket = int(now.timestamp()) // 60
    async with state.db.transaction() as session:
        challenges = (
            await session.execute(
                select(Challenge.id)  # no trace context: a re-published validation starts its own
                .where(Challenge.status == ChallengeStatus.processing.value, Challenge.updated_at < now - CHALLENGE_DEADLINE)
                .limit(BATCH)
            )
        ).scalars().all()
        orders = (
            await session.execute(
                select(Order.id, Order.trace_context)
                .where(Order.status == OrderStatus.processing.value, Order.updated_at < now - ORDER_DEADLINE)
                .limit(BATCH)
            )
        ).all()
    for challenge_id in challenges:
        await bus.publish_job(
            state.js, bus.SUBJECT_VALIDATE, bus.ValidateJob(challenge_id=challenge_id), f"validate-{challenge_id}-r{bucket}"
        )
    for order_id, traceparent in orders:
        await bus.publish_job(
            state.js, bus.SUBJECT_ISSUE, bus.IssueJob(order_id=order_id), f"issue-{order_id}-r{bucket}", traceparent
        )
    if challenges or orders:
        log.warning("re-published stuck jobs", extra={"challenges": len(challenges), "orders": len(orders)})
    return len(challenges) + len(orders)


async def reconcile_forever(state: FrontendState) -> None:
    while True:
        await asyncio.sleep(RECONCILE_INTERVAL)
        try:
            await reconcile_once(state)
        except Exception as error:  # noqa: BLE001 - NATS or the database down: next pass
            log.warning("reconcile pass failed: %s", error)
