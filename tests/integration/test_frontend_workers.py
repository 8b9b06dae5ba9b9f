"""ACME_RA_FRONTEND_WORKERS: several frontend processes on one port, one /metrics for all of them,
stopped together, and none left running when one of them dies."""

from __future__ import annotations

import os
import signal
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import certbot
from tests.support.dns_server import TestDnsServer
from tests.support.lab import Lab, running_lab

pytestmark = pytest.mark.integration

WORKERS = 2


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == str(pid) and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


def wait_until(condition: object, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def workers_lab(test_dns: TestDnsServer, fresh_database_url: str, tmp_path: Path) -> Iterator[Lab]:
    with running_lab(tmp_path / "var", fresh_database_url, test_dns.resolver_setting, test_dns.txt_dir,
                     {"ACME_RA_FRONTEND_WORKERS": str(WORKERS)}) as lab:
        yield lab


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_workers_issue_share_metrics_and_stop_together(workers_lab: Lab, tmp_path: Path) -> None:
    frontend = workers_lab.topology.services["frontend"].process
    workers = children(frontend.pid)
    assert len(workers) == WORKERS, workers

    run = certbot.certonly(workers_lab, ["workers.localhost"], "http-01", tmp_path)
    assert run.returncode == 0, f"{run.describe()}\n{workers_lab.logs()}"
    with httpx.Client(verify=ssl.create_default_context(cafile=str(workers_lab.ca_bundle))) as client:
        for _ in range(10):
            assert client.get(workers_lab.directory_url).status_code == 200
    metrics_url = f"http://{workers_lab.topology.settings.metrics_listen}/metrics"
    text = httpx.get(metrics_url).text
    # One scrape counts every worker's requests (prometheus_client's multiprocess files).
    assert metric(text, "acme_ra_http_requests_total", route="/acme/{provisioner}/new-order", status="201") == 1
    assert metric(text, "acme_ra_http_requests_total", route="/acme/{provisioner}/directory") >= 11
    assert metric(text, "acme_ra_http_requests_total", route="/acme/{provisioner}/order/{order_id}/finalize") == 1

    workers_lab.topology.stop()
    assert not any(alive(pid) for pid in workers), "a frontend worker outlived the frontend"


def test_a_dead_worker_stops_the_frontend(workers_lab: Lab) -> None:
    frontend = workers_lab.topology.services["frontend"].process
    workers = children(frontend.pid)
    assert len(workers) == WORKERS, workers
    os.kill(workers[0], signal.SIGKILL)
    # The parent stops the other worker and exits non-zero: its supervisor restarts it whole.
    assert wait_until(lambda: frontend.poll() is not None), "the frontend kept running without a worker"
    assert frontend.returncode != 0
    assert wait_until(lambda: not any(alive(pid) for pid in workers)), "a worker outlived the frontend"
