"""A test DNS server (dnslib), UDP and TCP on one port.

Every name under the test zones has an A record (127.0.0.1 by default), so http-01 for
``anything.acme-ra.test`` reaches this machine. TXT records come from files: the TXT values of
``NAME`` are the contents of the files in ``TXT_DIR/NAME/``, read on every query, so certbot's
hook scripts (``hooks/dns-auth-hook``, ``hooks/dns-cleanup-hook``) add and remove them from
another process. TTLs are 0: nothing should cache a test answer.

Run it by hand for the README's dns-01 recipe:

    .venv/bin/python tests/support/dns_server.py --port 5353 --txt-dir var/test-dns
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from types import TracebackType
from typing import Self

from dnslib import QTYPE, RCODE, RR, TXT, A, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer

log = logging.getLogger("tests.dns")

DEFAULT_ZONE = "acme-ra.test"
DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_TXT_DIR = Path("var/test-dns")
# How often the server tries another random port when the TCP side of one is taken.
PORT_ATTEMPTS = 20


def _normalise(name: str) -> str:
    return name.rstrip(".").lower()


class TestZoneResolver(BaseResolver):  # type: ignore[misc]
    """A for every name under the zones; TXT from ``txt_dir``; nothing else exists."""

    __test__ = False  # not a pytest test class

    def __init__(self, txt_dir: Path, zones: list[str], address: str = DEFAULT_ADDRESS) -> None:
        self.txt_dir = txt_dir
        self.zones = [_normalise(zone) for zone in zones]
        self.address = address

    def in_zone(self, name: str) -> bool:
        return any(name == zone or name.endswith("." + zone) for zone in self.zones)

    def txt_values(self, name: str) -> list[str]:
        directory = self.txt_dir / name
        if not directory.is_dir():
            return []
        return sorted(path.read_text().strip() for path in directory.iterdir() if path.is_file())

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        reply = request.reply()  # authoritative (aa) with recursion available, as dnslib sets it
        name = _normalise(str(request.q.qname))
        qtype = request.q.qtype
        txt = self.txt_values(name)
        if qtype == QTYPE.A and self.in_zone(name):
            reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(self.address), ttl=0))
        elif qtype == QTYPE.TXT and txt:
            for value in txt:
                reply.add_answer(RR(request.q.qname, QTYPE.TXT, rdata=TXT(value), ttl=0))
        elif not (self.in_zone(name) or txt):
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


class TestDnsServer:
    """UDP and TCP servers for :class:`TestZoneResolver` on ``address:port`` (0: a free port)."""

    __test__ = False

    def __init__(self, txt_dir: Path, zones: list[str] | None = None, port: int = 0,
                 address: str = DEFAULT_ADDRESS, answer: str = DEFAULT_ADDRESS,
                 logger: DNSLogger | None = None) -> None:
        self.txt_dir = txt_dir
        self.address = address
        self.resolver = TestZoneResolver(txt_dir, zones or [DEFAULT_ZONE], answer)
        self._logger = logger or DNSLogger(log="error", prefix=False, logf=log.warning)
        self._servers: list[DNSServer] = []
        self.port = port

    def start(self) -> Self:
        self.txt_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(PORT_ATTEMPTS if self.port == 0 else 1):
            udp = DNSServer(self.resolver, address=self.address, port=self.port, logger=self._logger)
            port = udp.server.server_address[1]
            try:
                tcp = DNSServer(self.resolver, address=self.address, port=port, tcp=True, logger=self._logger)
            except OSError:
                udp.server.server_close()
                if self.port:
                    raise
                continue
            self.port = port
            self._servers = [udp, tcp]
            for server in self._servers:
                server.start_thread()
            return self
        raise OSError("no port free for both UDP and TCP")

    def stop(self) -> None:
        for server in self._servers:
            server.stop()
            server.server.server_close()
            server.thread.join(5)
        self._servers = []

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    @property
    def resolver_setting(self) -> str:
        """The value of ACME_RA_DNS_RESOLVERS that points the validator here."""
        return f"{self.address}:{self.port}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=5353, help="UDP and TCP port (default 5353)")
    parser.add_argument("--address", default=DEFAULT_ADDRESS, help="listen address (default 127.0.0.1)")
    parser.add_argument("--zone", action="append", help=f"zone whose names resolve (default {DEFAULT_ZONE})")
    parser.add_argument("--answer", default=DEFAULT_ADDRESS, help="the A record of every name in the zone")
    parser.add_argument("--txt-dir", type=Path, default=DEFAULT_TXT_DIR,
                        help=f"where the hooks write TXT records (default {DEFAULT_TXT_DIR})")
    args = parser.parse_args(argv)
    server = TestDnsServer(args.txt_dir.resolve(), args.zone, args.port, args.address, args.answer,
                           logger=DNSLogger(prefix=False, logf=lambda line: print(line, flush=True)))
    try:
        server.start()
    except OSError as error:
        print(f"test DNS server: cannot listen on {args.address}:{args.port}: {error}", file=sys.stderr)
        return 1
    print(f"test DNS server on {server.resolver_setting} (UDP+TCP): zones {', '.join(server.resolver.zones)} "
          f"-> {args.answer}; TXT records from {server.txt_dir}/<name>/", flush=True)
    print(f"point the validator at it: ACME_RA_DNS_RESOLVERS={server.resolver_setting}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
