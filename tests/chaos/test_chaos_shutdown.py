"""Graceful shutdown (SIGTERM, as Kubernetes and docker stop send it):

- a frontend says 503 on /readyz first, still serving, then stops accepting and finishes the
  request in flight;
- a validator or a signer finishes the jobs in hand (or leaves them to be redelivered), then
  exits having run its whole shutdown: never a job lost.
"""

from __future__ import annotations

import asyncio
import signal
import ssl
import time

import httpx
import pytest

from tests.support.tcp_proxy import TcpProxy

from .lab import ChaosLab, assert_nothing_lost, metric, run_sql

pytestmark = pytest.mark.integration

TEST_TIMEOUT_SECONDS = 180
# How long a service may take to exit after SIGTERM (its drain included; seconds).
EXIT_TIMEOUT_SECONDS = 60.0
# uvicorn finishes its graceful shutdown, then re-raises the SIGTERM: exit status 143 (-15 here).
TERMINATED = (0, -signal.SIGTERM)
SHUTDOWN_COMPLETE = "Application shutdown complete."


def shut_down_cleanly(chaos: ChaosLab, name: str, code: int) -> bool:
    """The process exited after SIGTERM having run its whole shutdown (lifespan included)."""
    return code in TERMINATED and SHUTDOWN_COMPLETE in (chaos.deployment.log_dir / f"{name}.log").read_text()


class SlowRequest:
    """A signed POST sent over its own TLS connection, all but its last bytes: the frontend is
    serving it (reading the body) until :meth:`finish` sends the rest."""

    def __init__(self, port: int, context: ssl.SSLContext, path: str, body: bytes) -> None:
        self.port, self.context, self.path, self.body = port, context, path, body

    async def start(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(
            "127.0.0.1", self.port, ssl=self.context, server_hostname="localhost")
        head = (f"POST {self.path} HTTP/1.1\r\nHost: localhost:{self.port}\r\n"
                f"Content-Type: application/jose+json\r\nContent-Length: {len(self.body)}\r\n\r\n")
        self.writer.write(head.encode() + self.body[:-8])
        await self.writer.drain()

    async def finish(self) -> tuple[int, bytes]:
        self.writer.write(self.body[-8:])
        await self.writer.drain()
        async with asyncio.timeout(15):
            status_line = await self.reader.readline()
            rest = await self.reader.read()  # Connection: close after a shutdown
        self.writer.close()
        return int(status_line.split()[1]), rest


async def jobs_in_flight(health_url: str, gauge: str, at_least: int, deadline: float) -> float:
    """Wait until a worker's ``gauge`` (its /metrics, beside /readyz) shows ``at_least`` jobs."""
    async with httpx.AsyncClient(trust_env=False, timeout=3) as http:
        held = 0.0
        while held < at_least:
            assert time.monotonic() < deadline, f"only {held:g} jobs in flight ({gauge})"
            await asyncio.sleep(0.05)
            held = metric((await http.get(health_url.replace("/readyz", "/metrics"))).text, gauge)
    return held


async def readiness(url: str, context: ssl.SSLContext) -> str:
    try:
        async with httpx.AsyncClient(verify=context, trust_env=False, timeout=3) as http:
            return str((await http.get(url)).status_code)
    except httpx.ConnectError:
        return "refused"


async def test_frontend_sigterm_readiness_goes_false_first_then_the_request_in_flight_finishes(
    chaos: ChaosLab,
) -> None:
    """SIGTERM while a request is half sent: /readyz says 503 at once while the listener still
    serves (ACME_RA_SHUTDOWN_DELAY_SECONDS), then the listener closes; the request, finished
    after that, is answered; the process exits having run its shutdown."""
    async with asyncio.timeout(TEST_TIMEOUT_SECONDS):
        load = await chaos.start(validators=0, signers=0)
        client = (await load.accounts(1))[0]
        order_url, _ = await load.new_order(client, load.name("drain"), time.monotonic() + 30)
        nonce = (await load.http.head(client.directory["newNonce"])).headers["replay-nonce"]
        request = SlowRequest(chaos.frontend_port, load.context, order_url.split(str(chaos.frontend_port), 1)[1],
                              client.sign(order_url, "", nonce))
        await request.start()
        await asyncio.sleep(0.5)
        frontend = chaos.deployment.running("frontend")[0]
        frontend.sigterm()
        stopped = time.monotonic()
        chaos.figures.fault(f"SIGTERM {frontend.name} while it reads a request's body")
        probes = [await readiness(frontend.health_url, load.context)]
        while probes[-1] != "refused" and time.monotonic() - stopped < EXIT_TIMEOUT_SECONDS:
            await asyncio.sleep(0.2)
            probes.append(await readiness(frontend.health_url, load.context))
        closed_after = time.monotonic() - stopped
        status, body = await request.finish()
        code = await asyncio.to_thread(frontend.wait_exit, EXIT_TIMEOUT_SECONDS)
        chaos.figures.orders = 1
        chaos.figures.extra.update({
            "/readyz after SIGTERM": " ".join(sorted(set(probes[:-1]))) + f" for {closed_after:.1f}s, then "
                                     + probes[-1],
            "in-flight request (finished after the listener closed)": status, "exit status": code,
            "seconds to exit": round(time.monotonic() - stopped, 1),
        })
    assert probes[0] == "503" and set(probes[:-1]) == {"503"}, probes
    assert probes[-1] == "refused", probes
    assert status == 200, body[:500]
    assert b'"status":"pending"' in body.replace(b" ", b"")
    assert shut_down_cleanly(chaos, frontend.name, code), code


async def test_validator_sigterm_finishes_its_validations(chaos: ChaosLab) -> None:
    jobs = 4
    async with asyncio.timeout(TEST_TIMEOUT_SECONDS):
        load = await chaos.start(validators=1, signers=0)
        clients = await load.accounts(2)
        chaos.challenges.delay = 3.0
        deadline = time.monotonic() + 60
        orders = []
        for n in range(jobs):
            client = clients[n % 2]
            order_url, order = await load.new_order(client, load.name(f"vt-{n}"), deadline)
            _, challenge_url = await load.challenge_of(client, order, deadline)
            orders.append((client, order_url, challenge_url))
        await asyncio.gather(*(load.answer(client, url, deadline) for client, _, url in orders))
        validator = chaos.deployment.running("validator")[0]
        held = await jobs_in_flight(validator.health_url, "acme_ra_validator_jobs_in_flight", jobs, deadline)
        validator.sigterm()
        chaos.figures.fault(f"SIGTERM {validator.name} with {held:g} validations in flight")
        stopped = time.monotonic()
        code = await asyncio.to_thread(validator.wait_exit, EXIT_TIMEOUT_SECONDS)
        drained = (await asyncio.to_thread(
            run_sql, chaos.database_url, "SELECT count(*) AS n FROM challenges WHERE status = 'valid'"))[0][0]["n"]
        chaos.figures.extra.update({"exit status": code, "seconds to exit": round(time.monotonic() - stopped, 1),
                                    "validations finished during the drain": drained})
        chaos.challenges.delay = 0
        await asyncio.to_thread(chaos.deployment.start, "validator")  # for anything handed back
        chaos.figures.orders = jobs
        for client, order_url, _ in orders:
            await load.poll(client, order_url, {"ready"}, deadline + 60)
        figures = chaos.settle()
        figures.valid = int((await asyncio.to_thread(
            run_sql, chaos.database_url, "SELECT count(*) AS n FROM orders WHERE status = 'ready'"))[0][0]["n"])
        figures.lost = jobs - figures.valid
    assert shut_down_cleanly(chaos, validator.name, code), code
    assert figures.lost == 0
    assert drained == jobs, f"{drained} of {jobs} validations finished before the validator exited"
    assert figures.extra["validations repeated (tokens fetched twice)"] == 0
    assert figures.server_errors == 0 and figures.hangs == 0


async def test_signer_sigterm_finishes_or_hands_back_its_jobs(chaos: ChaosLab) -> None:
    orders = 4
    link = TcpProxy(chaos.pebble.port)
    chaos.extra_stops.append(link.stop)
    chaos.upstream_through(link.port)
    async with asyncio.timeout(TEST_TIMEOUT_SECONDS):
        load = await chaos.start()
        load.order_timeout = 150
        clients = await load.accounts(2)
        link.delay = 0.1
        run = chaos.spawn(load.run(clients, orders, "st"))
        signer = chaos.deployment.running("signer")[0]
        held = await jobs_in_flight(signer.health_url, "acme_ra_signer_jobs_in_flight", orders,
                                    time.monotonic() + 90)
        signer.sigterm()
        chaos.figures.fault(f"SIGTERM {signer.name} with {held:g} issue jobs in flight")
        stopped = time.monotonic()
        code = await asyncio.to_thread(signer.wait_exit, EXIT_TIMEOUT_SECONDS)
        drained = (await asyncio.to_thread(
            run_sql, chaos.database_url, "SELECT count(*) AS n FROM orders WHERE status = 'valid'"))[0][0]["n"]
        chaos.figures.extra.update({"exit status": code, "seconds to exit": round(time.monotonic() - stopped, 1),
                                    "issuances finished during the drain": drained})
        link.delay = 0.0
        await asyncio.to_thread(chaos.deployment.start, "signer")  # for anything handed back
        failures = await run
        figures = chaos.settle()
    assert shut_down_cleanly(chaos, signer.name, code), code
    assert_nothing_lost(figures, failures)
