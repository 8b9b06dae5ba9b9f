"""The validator against http-01 servers of an attacker's, in the real topology (a lab of the
test's own: a validator may die here): a decompression bomb, a redirect loop, redirects to a
forbidden port or scheme, a 1 MiB header and a server dribbling one byte a second each end their
challenge invalid with the right problem, quickly; the validator process is the same one
afterwards, its peak memory far under the 384 MiB of the Kubernetes manifests, and the next
challenge validates. A check that killed its validator ACME_RA_VALIDATION_MAX_ATTEMPTS times is
not run again (the challenge ends invalid), and a lost job is published again at most ACME_RA_RECONCILE_MAX_REPUBLICATIONS times.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from typing import Any

import httpx
import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from sqlalchemy import select, update

from acme_ra import bus, natsauth
from acme_ra.db.engine import Database
from acme_ra.db.models import Challenge, utcnow
from tests.conformance.client import TestAcmeClient
from tests.support.hostile_http import HostileChallengeServer
from tests.support.lab import TEST_ZONE, Lab

from .conftest import QUICK_ANSWER_SECONDS, assert_still_up

OwnLab = Callable[..., AbstractContextManager[Lab]]

# The validator's memory limit in deploy/k8s, and what "well under" it means here: its peak
# resident set (VmHWM) after every hostile answer.
KUBERNETES_LIMIT_MIB = 384
PEAK_RSS_LIMIT_MIB = KUBERNETES_LIMIT_MIB // 2
# The lab's total deadline per validation (ACME_RA_VALIDATION_TIMEOUT_SECONDS), short for the test.
VALIDATION_TIMEOUT_SECONDS = 5
# Longest wait for a challenge to leave "processing" (seconds).
OUTCOME_WAIT_SECONDS = 30.0
# The validators' ack wait in the poison-job test (production: bus.VALIDATE_ACK_WAIT_SECONDS):
# what a killed validator's job waits before it comes back.
ACK_WAIT_SECONDS = 5.0
# How often the frontends' reconciler looks in the lost-job test (ACME_RA_RECONCILE_INTERVAL_SECONDS,
# default 15).
RECONCILE_PASS_SECONDS = 2.0

# mode of the hostile server → (problem type, what the detail says, most seconds to the outcome)
HOSTILE_ANSWERS: dict[str, tuple[str, str, float]] = {
    "bomb": ("unauthorized", 'Content-Encoding "gzip, gzip" is not accepted', QUICK_ANSWER_SECONDS),
    "loop": ("connection", "too many redirects (more than 10)", QUICK_ANSWER_SECONDS),
    "forbidden-port": ("connection", "redirect to http port 22 is not followed", QUICK_ANSWER_SECONDS),
    "forbidden-scheme": ("connection", "redirect to file URL is not followed", QUICK_ANSWER_SECONDS),
    "big-header": ("connection", "response headers longer than 102400 bytes", QUICK_ANSWER_SECONDS),
    "dribble": ("connection", f"timed out after {VALIDATION_TIMEOUT_SECONDS} s", VALIDATION_TIMEOUT_SECONDS + 5.0),
}


def vm_hwm_mib(pid: int) -> float:
    """Peak resident set of a process (``VmHWM`` in /proc/<pid>/status), MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for process {pid}")


async def operator_nats(lab: Lab) -> NATS:
    """A connection to the lab's NATS as its operator user (acme_ra.natsauth), which may do anything."""
    assert lab.topology.nats_auth_dir is not None
    options = natsauth.user_options(lab.topology.nats_auth_dir, natsauth.OPERATOR)
    return await nats.connect(lab.topology.nats_url, name="hostile-test", **options)


def validator_pid(lab: Lab) -> int:
    child = lab.topology.services["validator"]
    assert child.returncode is None, lab.logs()
    return int(child.process.pid)


@asynccontextmanager
async def acme_client(lab: Lab) -> AsyncIterator[TestAcmeClient]:
    trust = ssl.create_default_context(cafile=str(lab.ca_bundle))
    async with httpx.AsyncClient(verify=trust, timeout=30, trust_env=False) as http:
        client = TestAcmeClient(http, lab.directory_url)
        await client.load_directory()
        assert (await client.register()).status == 201
        yield client


async def answer_challenge(client: TestAcmeClient, server: HostileChallengeServer, name: str,
                           mode: str) -> tuple[str, str]:
    """Order ``name``, serve its http-01 token the ``mode`` way, answer the challenge: (challenge
    URL, order URL)."""
    order = await client.post(client.directory["newOrder"], {"identifiers": [{"type": "dns", "value": name}]})
    assert order.status == 201, order.text
    authz = await client.post(order.body["authorizations"][0])
    challenge = next(c for c in authz.body["challenges"] if c["type"] == "http-01")
    server.modes[challenge["token"]] = mode
    server.key_authorizations[challenge["token"]] = client.key_authorization(challenge["token"])
    reply = await client.post(challenge["url"], {})
    assert reply.status == 200, reply.text
    return challenge["url"], order.location or ""


async def outcome(client: TestAcmeClient, url: str, wait: float = OUTCOME_WAIT_SECONDS) -> dict[str, Any]:
    """The challenge once no longer processing."""
    deadline = time.monotonic() + wait
    while True:
        reply = await client.post(url)
        if reply.body["status"] not in ("pending", "processing"):
            return dict(reply.body)
        assert time.monotonic() < deadline, f"still {reply.body['status']} after {wait} s"
        await asyncio.sleep(0.2)


async def validate(client: TestAcmeClient, server: HostileChallengeServer, name: str,
                   mode: str) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    url, _ = await answer_challenge(client, server, name, mode)
    return await outcome(client, url), time.monotonic() - started


async def test_hostile_answers_end_invalid_and_the_validator_lives_on(own_lab: OwnLab) -> None:
    with own_lab(ACME_RA_VALIDATION_TIMEOUT_SECONDS=str(VALIDATION_TIMEOUT_SECONDS)) as lab:
        pid = validator_pid(lab)
        server = HostileChallengeServer(port=lab.ports.http01, tls_port=lab.ports.tls_alpn)
        async with server.running(), acme_client(lab) as client:
            modes = list(HOSTILE_ANSWERS)
            results = await asyncio.gather(
                *(validate(client, server, f"{mode}.hostile.{TEST_ZONE}", mode) for mode in modes))
            for mode, (challenge, took) in zip(modes, results):
                problem_type, detail, most_seconds = HOSTILE_ANSWERS[mode]
                assert challenge["status"] == "invalid", (mode, challenge)
                assert challenge["error"]["type"] == f"urn:ietf:params:acme:error:{problem_type}", (mode, challenge)
                assert detail in challenge["error"]["detail"], (mode, challenge)
                assert took < most_seconds, f"{mode}: {took:.1f} s"

            # The same process, its peak memory far under the Kubernetes limit.
            assert validator_pid(lab) == pid
            peak = vm_hwm_mib(pid)
            assert peak < PEAK_RSS_LIMIT_MIB, f"validator peak RSS {peak:.0f} MiB"

            # And the next challenge validates: a plain answer, and one compressed anyway.
            for mode in ("good", "gzip"):
                challenge, took = await validate(client, server, f"{mode}.next.{TEST_ZONE}", mode)
                assert challenge["status"] == "valid", (mode, challenge)
                assert took < QUICK_ANSWER_SECONDS
        assert_still_up(lab)


@contextmanager
def stopped(pid: int) -> Iterator[None]:
    """The process frozen (SIGSTOP) until the block ends: it takes no job meanwhile."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def next_job(js: JetStreamContext, challenge_url: str, timeout: float) -> Any:
    """The next validation job on the validators' durable consumer, which must be this challenge's."""
    subscription = await js.pull_subscribe(bus.SUBJECT_VALIDATE, durable=bus.DURABLE_VALIDATOR, stream=bus.JOBS_STREAM)
    try:
        [message] = await subscription.fetch(1, timeout=timeout)
    finally:
        await subscription.unsubscribe()
    assert bus.ValidateJob.model_validate_json(message.data).challenge_id == challenge_url.rsplit("/", 1)[1]
    return message


async def short_ack_wait(js: JetStreamContext, seconds: float) -> None:
    """The validators' consumer again, with a short ack wait: a job held by a killed validator
    comes back after ``seconds`` (production: bus.VALIDATE_ACK_WAIT_SECONDS)."""
    await js.delete_consumer(bus.JOBS_STREAM, bus.DURABLE_VALIDATOR)
    await js.add_consumer(bus.JOBS_STREAM, ConsumerConfig(
        durable_name=bus.DURABLE_VALIDATOR, filter_subject=bus.SUBJECT_VALIDATE, ack_policy=AckPolicy.EXPLICIT,
        ack_wait=seconds, max_deliver=bus.MAX_DELIVER, max_ack_pending=10_000))


def restart_validator(lab: Lab) -> int:
    """kill -9 the lab's validator, start another in its place (the launcher's way); its pid."""
    old = lab.topology.services["validator"]
    os.kill(old.process.pid, signal.SIGKILL)
    old.wait_stopped(10)
    lab.topology.start_service("validator")
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{lab.ports.validator}/readyz", timeout=2).status_code == 200:
                return validator_pid(lab)
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, lab.logs()
        time.sleep(0.2)


async def test_a_check_that_kills_its_validator_is_abandoned(own_lab: OwnLab) -> None:
    # ACME_RA_VALIDATION_MAX_ATTEMPTS=1: the check that killed one validator is not run again.
    with own_lab(ACME_RA_VALIDATION_MAX_ATTEMPTS="1") as lab:
        server = HostileChallengeServer(port=lab.ports.http01, tls_port=lab.ports.tls_alpn)
        nc = await operator_nats(lab)
        try:
            await short_ack_wait(nc.jetstream(), ACK_WAIT_SECONDS)
            async with server.running(), acme_client(lab) as client:
                url, _ = await answer_challenge(client, server, f"poison.{TEST_ZONE}", "hang")
                path = next(iter(server.modes))
                deadline = time.monotonic() + 10
                while not server.requests:  # the validator is in the middle of the check
                    assert time.monotonic() < deadline, lab.logs()
                    await asyncio.sleep(0.05)
                # It dies there (as an OOM kill would have it); the job comes back to the next one.
                pid = await asyncio.to_thread(restart_validator, lab)
                challenge = await outcome(client, url)
                assert challenge["status"] == "invalid"
                assert challenge["error"] == {
                    "type": "urn:ietf:params:acme:error:serverInternal",
                    "status": 500,
                    "detail": "validation was attempted 1 time and never completed (the validator failed or "
                    "stopped each time); it is not tried again",
                }
                assert server.requests == {f"/.well-known/acme-challenge/{path}": 1}  # not fetched again
                assert validator_pid(lab) == pid
                challenge, _ = await validate(client, server, f"after-poison.{TEST_ZONE}", "good")
                assert challenge["status"] == "valid"
        finally:
            await nc.close()
        assert_still_up(lab)


async def test_a_lost_job_is_published_again_a_bounded_number_of_times(
    own_lab: OwnLab, fresh_database_url: str
) -> None:
    with own_lab(ACME_RA_RECONCILE_MAX_REPUBLICATIONS="1",
                 ACME_RA_RECONCILE_INTERVAL_SECONDS=str(RECONCILE_PASS_SECONDS)) as lab:
        pid = validator_pid(lab)
        server = HostileChallengeServer(port=lab.ports.http01, tls_port=lab.ports.tls_alpn)
        nc = await operator_nats(lab)
        db = Database(fresh_database_url)

        async def age(challenge_id: str) -> None:
            """Past the reconciler's deadline (60 s), without waiting for it."""
            async with db.transaction() as session:
                await session.execute(update(Challenge).where(Challenge.id == challenge_id).values(
                    updated_at=utcnow() - dt.timedelta(minutes=5)))

        async def counted(challenge_id: str, times: int) -> None:
            """The reconciler has recorded its re-publication (it publishes, then counts)."""
            deadline = time.monotonic() + 10
            while True:
                async with db.transaction() as session:
                    found = (await session.execute(
                        select(Challenge.republished).where(Challenge.id == challenge_id))).scalar_one()
                if found == times:
                    return
                assert time.monotonic() < deadline, f"republished = {found}, expected {times}"
                await asyncio.sleep(0.1)

        try:
            async with server.running(), acme_client(lab) as client:
                with stopped(pid):
                    await asyncio.sleep(bus.PULL_GIVE_UP_SECONDS + 0.5)
                    url, order_url = await answer_challenge(client, server, f"lost.{TEST_ZONE}", "good")
                    challenge_id = url.rsplit("/", 1)[1]
                    # Taken and acked without an outcome: lost, twice (the job, then its re-publication).
                    await (await next_job(nc.jetstream(), url, timeout=10)).ack()
                    await age(challenge_id)
                    again = await next_job(nc.jetstream(), url, timeout=RECONCILE_PASS_SECONDS + 10)
                    assert again.headers["Nats-Msg-Id"] == f"validate-{challenge_id}-r1"
                    await again.ack()
                    await counted(challenge_id, 1)
                    await age(challenge_id)
                    challenge = await outcome(client, url, wait=RECONCILE_PASS_SECONDS + 10)
                    assert challenge["status"] == "invalid"
                    assert challenge["error"] == {
                        "type": "urn:ietf:params:acme:error:serverInternal",
                        "status": 500,
                        "detail": "the validation job was published 2 times and never completed; it is not tried "
                        "again",
                    }
                    assert (await client.post(order_url)).body["status"] == "invalid"
                    # And it is not published again.
                    subscription = await nc.jetstream().pull_subscribe(
                        bus.SUBJECT_VALIDATE, durable=bus.DURABLE_VALIDATOR, stream=bus.JOBS_STREAM)
                    try:
                        await subscription.fetch(1, timeout=RECONCILE_PASS_SECONDS + 2)
                        raise AssertionError("a job was published for a challenge no longer processing")
                    except TimeoutError:
                        pass
                    finally:
                        await subscription.unsubscribe()
                assert server.requests == {}
        finally:
            await nc.close()
            await db.dispose()
        assert_still_up(lab)
