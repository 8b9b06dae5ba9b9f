"""NATS faults under load: the one nats-server restarted (persistent store), and a 3-node
JetStream cluster with the job streams replicated R3 losing the node that leads the job stream.
Every order ends valid within seconds (the services reconnect; a job whose publish failed is
published again by the frontend's outbox), nothing is issued twice, clients never see a 500 or a hang."""

from __future__ import annotations

import asyncio

import pytest

from acme_ra import bus

from .lab import ChaosLab, assert_nothing_lost
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
TEST_TIMEOUT_SECONDS = 120


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
    chaos.use_nats(cluster)
    async with asyncio.timeout(TEST_TIMEOUT_SECONDS):
        load = await chaos.start(validators=2, replicas=3)
        load.order_timeout = ORDER_TIMEOUT_SECONDS
        nc = await chaos.operator_connection("chaos-test")
        try:
            info = await nc.jetstream().stream_info(bus.JOBS_STREAM)
        finally:
            await nc.close()
        assert info.config.num_replicas == 3, "the services scaled the job stream down"
        assert info.cluster is not None and info.cluster.leader
        leader = cluster.node(info.cluster.leader)
        chaos.figures.extra["job stream"] = f"R{info.config.num_replicas}, leader {leader.name}"

        clients = await load.accounts(ACCOUNTS)
        run = chaos.spawn(load.run(clients, ORDERS, "r", stagger=STAGGER_SECONDS))
        await asyncio.sleep(ORDERS * STAGGER_SECONDS / 2)
        await asyncio.to_thread(leader.kill)
        chaos.figures.fault(f"kill -9 {leader.name}, the job stream's leader")
        failures = await run
        figures = chaos.settle()
        figures.extra.update(chaos.log_counts())

    assert_nothing_lost(figures, failures)
