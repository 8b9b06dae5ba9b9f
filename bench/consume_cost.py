"""``python -m bench.consume_cost``: what ``bus.consume`` costs a worker per job, in CPU and NATS messages.

A nats-server of its own (JetStream, a temporary store) and a consumer process running
``bus.consume`` with a handler that does what the validator's does on the bus, and nothing else:
ack the job, then publish its ``validated`` event (``--events unconfirmed``, as the validator
does: a plain NATS publish; ``confirmed``: a JetStream publish that waits for its PubAck). This
process publishes ``-n`` jobs at a steady ``--rate`` (jobs trickle in, as the frontend sends
them: all at once would flatter any batching) and prints, per job, the consumer's CPU and
nats-server's CPU (both from /proc, only while the jobs flow), and the messages the consumer sent
and received (nats-py's counters). Run::

    .venv/bin/python -m bench.consume_cost [-n 600] [--rate 40] [--concurrency 16] [--repeat 3]
                                           [--events unconfirmed|confirmed]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nats.aio.msg import Msg

from acme_ra import bus
from acme_ra_tools.supervisor import free_port, nats_server_binary

# Seconds the consumer may take past the last publish before the run counts as failed.
DRAIN_TIMEOUT_SECONDS = 30.0


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def consumer(url: str, n: int, concurrency: int, events: str) -> None:
    """The consumer process: handle ``n`` jobs, then print its counters as one JSON line."""
    nc = await bus.connect(url, "consume-cost")
    js = nc.jetstream()
    stop = asyncio.Event()
    handled = 0
    started: dict[str, float] = {}

    async def handle(job: bus.ValidateJob, msg: Msg) -> None:
        nonlocal handled
        if not started:
            started.update(cpu=time.process_time(), wall=time.monotonic(), **{
                key: float(value) for key, value in nc.stats.items()})
        await asyncio.sleep(0.005)  # the check and the database: the job stays in flight a while
        await msg.ack()
        event = bus.Event(kind="validated", challenge_id=job.challenge_id, status="valid")
        if events == "confirmed":
            await bus.publish_event(js, event)
        else:
            await bus.publish_event_unconfirmed(nc, event)
        handled += 1
        if handled == n:
            stop.set()

    print("ready", flush=True)
    await bus.consume(js, bus.SUBJECT_VALIDATE, bus.DURABLE_VALIDATOR, bus.ValidateJob, handle, stop,
                      concurrency=concurrency)
    counts = {key: nc.stats[key] - started[key] for key in ("in_msgs", "out_msgs")}
    print(json.dumps({"cpu": time.process_time() - started["cpu"], "wall": time.monotonic() - started["wall"],
                      **counts}), flush=True)
    await nc.close()


async def one_round(n: int, rate: float, concurrency: int, events: str, workdir: Path) -> dict[str, float]:
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    argv = [nats_server_binary(), "-js", "-sd", str(workdir / f"nats-{port}"), "-a", "127.0.0.1", "-p", str(port)]
    # Popen returns at once; the server's readiness is polled below.
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: ASYNC220
    child = None
    try:
        nc = None
        for _ in range(100):
            try:
                nc = await bus.connect(url, "consume-cost-publisher")
                break
            except Exception:  # noqa: BLE001 - not listening yet
                await asyncio.sleep(0.1)
        assert nc is not None, "nats-server did not start"
        js = nc.jetstream()
        await bus.ensure_streams(js)
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.consume_cost", "--consumer", url, "-n", str(n),
            "--concurrency", str(concurrency), "--events", events, stdout=asyncio.subprocess.PIPE)
        assert child.stdout is not None
        assert (await child.stdout.readline()).strip() == b"ready"
        await asyncio.sleep(0.5)  # its first pull request is waiting
        server_cpu = process_cpu_seconds(server.pid)
        for i in range(n):
            await bus.publish_job(js, bus.SUBJECT_VALIDATE, bus.ValidateJob(challenge_id=f"c{i}"), f"job-{port}-{i}")
            await asyncio.sleep(1 / rate)
        line = await asyncio.wait_for(child.stdout.readline(), DRAIN_TIMEOUT_SECONDS)
        server_cpu = process_cpu_seconds(server.pid) - server_cpu
        await child.wait()
        await nc.close()
        result = json.loads(line)
        return {"consumer_ms": result["cpu"] / n * 1000, "server_ms": server_cpu / n * 1000,
                "out_msgs": result["out_msgs"] / n, "in_msgs": result["in_msgs"] / n}
    finally:
        if child is not None and child.returncode is None:
            child.kill()
        server.terminate()
        server.wait()


async def main_async(n: int, rate: float, concurrency: int, repeat: int, events: str) -> None:
    rounds = []
    with tempfile.TemporaryDirectory() as workdir:
        for _ in range(repeat):
            rounds.append(await one_round(n, rate, concurrency, events, Path(workdir)))
    print(f"{n} jobs at {rate:g}/s, concurrency {concurrency}, events {events}, {repeat} rounds (median; rounds):")
    for key, label in (("consumer_ms", "consumer CPU ms/job"), ("server_ms", "nats-server CPU ms/job"),
                       ("out_msgs", "messages sent/job"), ("in_msgs", "messages received/job")):
        values = [r[key] for r in rounds]
        print(f"  {label:<24} {statistics.median(values):6.3f}  ({', '.join(f'{v:.3f}' for v in values)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=600, help="jobs per round")
    parser.add_argument("--rate", type=float, default=40.0, help="jobs published per second")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--events", choices=["unconfirmed", "confirmed"], default="unconfirmed")
    parser.add_argument("--consumer", metavar="URL", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.consumer:
        import uvloop  # the services run on uvloop (uvicorn's default when installed)

        uvloop.run(consumer(args.consumer, args.n, args.concurrency, args.events))
        return
    asyncio.run(main_async(args.n, args.rate, args.concurrency, args.repeat, args.events))


if __name__ == "__main__":
    main()
