"""Races a client can start on purpose: two finalizes of one order at once give one issuance; two
POSTs to one challenge at once give one validation; two requests signed with one nonce, sent at
once: exactly one is served, the other is badNonce. Real processes, PostgreSQL, Pebble."""

from __future__ import annotations

import asyncio
import base64
import time
from collections import Counter

import httpx
import pytest

from tests.conformance.client import Reply, TestAcmeClient, make_csr

from .lab import ChaosLab, assert_nothing_lost, metric

pytestmark = pytest.mark.integration

ORDERS = 8
ACCOUNTS = 2
NONCE_TRIALS = 20
TEST_TIMEOUT_SECONDS = 180


async def fresh_nonce(client: TestAcmeClient) -> str:
    response = await client.http.head(client.directory["newNonce"])
    return response.headers["replay-nonce"]


async def twice(client: TestAcmeClient, url: str, payload: object = "") -> list[Reply]:
    """The same request twice, each with a nonce of its own, sent at the same moment."""
    first, second = await fresh_nonce(client), await fresh_nonce(client)
    bodies = [client.sign(url, payload, first), client.sign(url, payload, second)]
    return list(await asyncio.gather(*(client.post_raw(url, body) for body in bodies)))


async def test_concurrent_finalizes_challenges_and_nonces(chaos: ChaosLab) -> None:
    async with asyncio.timeout(TEST_TIMEOUT_SECONDS):
        load = await chaos.start(validators=2)
        clients = await load.accounts(ACCOUNTS)
        finalizes: Counter[str] = Counter()
        orders_of: dict[int, list[str]] = {n: [] for n in range(ACCOUNTS)}
        challenge_posts: Counter[str] = Counter()

        async def one(n: int) -> None:
            client = clients[n % ACCOUNTS]
            name = load.name(f"c-{n}")
            deadline = time.monotonic() + load.order_timeout
            order_url, order = await load.new_order(client, name, deadline)
            orders_of[n % ACCOUNTS].append(order_url)
            _, challenge_url = await load.challenge_of(client, order, deadline)
            for reply in await twice(client, challenge_url, {}):
                challenge_posts[f"{reply.status} {reply.body.get('status') or reply.problem_type}"] += 1
            order = await load.poll(client, order_url, {"ready"}, deadline)
            csr, _ = make_csr([name])
            payload = {"csr": base64.urlsafe_b64encode(csr).rstrip(b"=").decode()}
            for reply in await twice(client, order["finalize"], payload):
                finalizes[f"{reply.status} {reply.problem_type or reply.body.get('status')}"] += 1
            order = await load.poll(client, order_url, {"valid"}, deadline)
            await load.download(client, order_url, order, name, deadline)

        chaos.figures.orders = ORDERS
        await asyncio.gather(*(one(n) for n in range(ORDERS)))
        chaos.figures.fault(f"{ORDERS} pairs of simultaneous challenge POSTs, {ORDERS} pairs of simultaneous finalizes")

        # One nonce, two requests at once (each read one of the account's own orders).
        nonce_pairs: Counter[str] = Counter()
        client = clients[0]
        urls = orders_of[0][:2]
        for _ in range(NONCE_TRIALS):
            nonce = await fresh_nonce(client)
            bodies = [client.sign(url, "", nonce) for url in urls]
            replies = await asyncio.gather(*(client.post_raw(url, body) for url, body in zip(urls, bodies)))
            nonce_pairs[" + ".join(sorted(f"{r.status} {r.problem_type or 'ok'}" for r in replies))] += 1
        chaos.figures.fault(f"{NONCE_TRIALS} pairs of requests sharing one nonce")

        async with httpx.AsyncClient(trust_env=False, timeout=5) as http:
            validations = 0.0
            for validator in chaos.deployment.running("validator"):
                validations += metric((await http.get(validator.health_url.replace("/readyz", "/metrics"))).text,
                                      "acme_ra_validations_total")
            signer = chaos.deployment.running("signer")[0]
            signer_metrics = (await http.get(signer.health_url.replace("/readyz", "/metrics"))).text
        figures = chaos.settle()
        figures.extra.update({
            "challenge POST pairs": dict(challenge_posts), "finalize pairs": dict(finalizes),
            "one-nonce pairs": dict(nonce_pairs), "validations done (validator metrics)": validations,
            "certificates issued (signer metrics)": metric(signer_metrics, "acme_ra_certificates_issued_total"),
        })

    assert_nothing_lost(figures, [])
    # One finalize of each pair wins: it answers processing, or valid when the certificate came
    # within ACME_RA_ANSWER_WAIT_SECONDS; the other is refused.
    assert finalizes["403 orderNotReady"] == ORDERS, finalizes
    assert finalizes["200 processing"] + finalizes["200 valid"] == ORDERS, finalizes
    # Both answered 200; the one that lost the race shows the challenge as it read it (pending).
    assert sum(challenge_posts.values()) == 2 * ORDERS and all(k.startswith("200 ") for k in challenge_posts)
    assert validations == ORDERS, validations
    assert figures.extra["validations repeated (tokens fetched twice)"] == 0
    assert figures.extra["certificates issued (signer metrics)"] == ORDERS
    assert nonce_pairs == {"200 ok + 400 badNonce": NONCE_TRIALS}, nonce_pairs
