"""NATS faults under load: the one nats-server restarted (persistent store), and a 3-node
JetStream cluster losing the node that leads the job stream. In the cluster the streams are made
R1 first (a deployment before ACME_RA_NATS_STREAM_REPLICAS), and the services, started with
ACME_RA_NATS_STREAM_REPLICAS=3 and the three servers' URLs, scale them to R3 in place, their
consumers with them.
Every order ends valid within seconds (the services reconnect; a job whose publish failed is
published again by the frontend's outbox), nothing is issued twice, clients never see a 500 or a hang."""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.js import JetStreamContext

from acme_ra import bus
from acme_ra.config import ENV_PREFIX

from .lab import ChaosLab, assert_nothing_lost
from .load import waits
from .processes import NatsCluster, NatsServer

pytestmark = pytest.mark.integration

ORDERS = 30
ACCOUNTS = 5
# Orders start this far apart, so that the fault lands on orders at every step (seconds).
STAGGER_SECONDS = 0.1
# How long the nats-server stays down (seconds).
DOWN_SECONDS = 3.0
# A job whose publish failed is published again by the frontend's outbox within seconds of NATS
# answering again; the reconciler (60 s for a validation, 120 s for an issuance) is not needed.
ORDER_TIMEOUT_SECONDS = 45.0
TEST_TIMEOUT_SECONDS = 150
# How long a consumer's new replicas may take to catch up after its stream was scaled (seconds).
REPLICAS_CATCH_UP_SECONDS = 30.0


async def test_nats_server_restarted_mid_load(chaos: ChaosLab) -> None:
    async with asyncio.timeout(TEST_TIMEOUT_SECONDS):
        load = await chaos.start(validators=2)
        load.order_timeout = ORDER_TIMEOUT_SECONDS
        clients = await load.accounts(ACCOUNTS)
        run = chaos.spawn(load.run(clients, ORDERS, "n", stagger=STAGGER_SECONDS))
        await asyncio.sleep(ORDERS * STAGGER_SECONDS / 2)
        assert isinstance(chaos.nats, NatsServer)  # one server: the cluster has its own test
        await asyncio.to_thread(chaos.nats.terminate)
        chaos.figures.fault(f"nats-server stopped (SIGTERM) for {DOWN_SECONDS:g}s")
        await asyncio.sleep(DOWN_SECONDS)
        await asyncio.to_thread(chaos.nats.start)
        chaos.figures.fault("nats-server started again (same port, same store)")
        failures = await run
        figures = chaos.settle()
        figures.extra.update(chaos.log_counts())

    assert_nothing_lost(figures, failures)


async def test_nats_cluster_loses_the_job_stream_leader(chaos: ChaosLab) -> None:
    cluster = NatsCluster(chaos.workdir)
    chaos.env[f"{ENV_PREFIX}NATS_STREAM_REPLICAS"] = "3"
    chaos.use_nats(cluster)
    assert chaos.env[f"{ENV_PREFIX}NATS_URL"].count(",") == 2, "the services know one server only"
    async with asyncio.timeout(TEST_TIMEOUT_SECONDS):
        load = await chaos.start(validators=2, replicas=1)
        load.order_timeout = ORDER_TIMEOUT_SECONDS
        nc = await chaos.operator_connection("chaos-test")
        try:
            js = nc.jetstream()
            info = await js.stream_info(bus.JOBS_STREAM)
            events = await js.stream_info(bus.EVENTS_STREAM)
            assert info.config.num_replicas == 3, "the services did not scale the job stream to R3"
            assert events.config.num_replicas == 3, "the services did not scale the event stream to R3"
            for durable in (bus.DURABLE_VALIDATOR, bus.DURABLE_SIGNER):
                await consumer_replicated(js, durable)
        finally:
            await nc.close()
        assert info.cluster is not None and info.cluster.leader
        leader = cluster.node(info.cluster.leader)
        chaos.figures.extra["job stream"] = f"R{info.config.num_replicas}, leader {leader.name}"

        clients = await load.accounts(ACCOUNTS)
        run = chaos.spawn(load.run(clients, ORDERS, "r", stagger=STAGGER_SECONDS))
        await asyncio.sleep(ORDERS * STAGGER_SECONDS / 2)
        await asyncio.to_thread(leader.kill)
        killed = time.monotonic()
        chaos.figures.fault(f"kill -9 {leader.name}, the job stream's leader")
        failures = await run
        figures = chaos.settle()
        figures.extra.update(chaos.log_counts())
        figures.extra.update(waits(load.timeline, killed))

    assert_nothing_lost(figures, failures)


async def consumer_replicated(js: JetStreamContext, durable: str) -> None:
    """Wait until the consumer has a leader and two current replicas (it followed its stream to
    R3; the new peers catch up within seconds)."""
    deadline = time.monotonic() + REPLICAS_CATCH_UP_SECONDS
    while True:
        cluster = (await js.consumer_info(bus.JOBS_STREAM, durable)).cluster
        peers = (cluster.replicas or []) if cluster is not None else []
        if cluster is not None and cluster.leader and len(peers) == 2 and all(peer.current for peer in peers):
            return
        assert time.monotonic() < deadline, f"consumer {durable} not on three nodes: {cluster}"
        await asyncio.sleep(0.5)
