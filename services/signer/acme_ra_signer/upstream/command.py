"""The ``command`` upstream: an external program signs (certreq for Microsoft ADCS, EJBCA's CLI,
``openssl ca``, an in-house CA).

Configured in ``ACME_RA_CONFIG_FILE``::

    upstreams:
      adcs:
        type: command
        issue: /usr/local/libexec/acme-ra-adcs-issue    # CSR in, chain out
        revoke: /usr/local/libexec/acme-ra-adcs-revoke  # optional
        timeout_seconds: 120                            # optional, default 60

The issue command gets the CSR (PEM) on stdin and prints the chain (PEM, leaf first) on stdout;
its environment is the signer's without any ``ACME_RA_*`` setting (no secret of acme-ra leaks)
plus ``ACME_RA_ORDER_ID``, ``ACME_RA_NAMES`` (the order's identifiers, comma-separated, in the
order's order), ``ACME_RA_PROFILE`` and ``ACME_RA_PROVISIONER`` (empty when none) and
``ACME_RA_UPSTREAM`` (this upstream's name). The revoke command gets the certificate (PEM) on
stdin and ``ACME_RA_SERIAL`` (lowercase hex), ``ACME_RA_REASON`` (the RFC 5280 reason code)
and ``ACME_RA_UPSTREAM``. Exit codes: 0 done; ``EXIT_RETRY_LATER`` (75, EX_TEMPFAIL) nothing
was done, try again later (the job is retried); anything else refused, the last line of stderr
being the reason the client sees.

A command cannot be asked whether it already signed: the journal records that it runs before it
runs. A command that timed out (killed), or a signer that died while it ran, leaves an unknown
outcome: acme-ra never runs it again for that order, the order fails saying so (the operator
looks in the CA). What it printed is checked: a PEM chain whose leaf holds the CSR's key and
every name of the order, else the order fails with what was wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pydantic import BaseModel, ConfigDict, Field

from acme_ra.config import ENV_PREFIX, Settings
from acme_ra.db.models import UpstreamOrderState, utcnow
from acme_ra_signer.upstream.base import (
    IssuedChain,
    IssueRequest,
    NamedUpstream,
    UpstreamRejected,
    UpstreamUnavailable,
    csr_and_refusal,
    refusal,
)
from acme_ra_signer.upstream.journal import Journal

log = logging.getLogger("acme_ra_signer.upstream.command")

State = UpstreamOrderState
# The exit code that means "nothing was done, try again later" (sysexits.h EX_TEMPFAIL).
EXIT_RETRY_LATER = 75
# timeout_seconds when not set: the longest a command may run (seconds).
DEFAULT_TIMEOUT_SECONDS = 60.0
# The most of a command's stdout read (a chain is a few kB).
MAX_OUTPUT_BYTES = 1 << 20


@dataclass(frozen=True)
class CommandConfig:
    """One ``type: command`` upstream as configured."""

    name: str
    issue: Path
    origin: str
    revoke: Path | None = None
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS

    type = "command"

    def setting(self, name: str) -> str:
        return self.origin + name

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name, "type": self.type, "issue": str(self.issue),
            "revoke": str(self.revoke) if self.revoke else None, "timeout_seconds": self.timeout_seconds,
            "authz_strategy": None, "dns_update": None,
        }

    def build(self, *, http_timeout: float, proxy: str | None) -> CommandUpstream:
        return CommandUpstream(self)


class _FileCommand(BaseModel):
    model_config = ConfigDict(extra="forbid")
    issue: Path
    revoke: Path | None = None
    timeout_seconds: float = Field(DEFAULT_TIMEOUT_SECONDS, gt=0, le=3600)


def from_file(settings: Settings, name: str, fields: dict[str, Any], origin: str) -> CommandConfig:
    """``upstreams.<name>`` of ``type: command``; raises ``UpstreamConfigError`` (one line)."""
    from acme_ra_signer.upstream.config_errors import PREFIX, UpstreamConfigError, validated

    entry = validated(_FileCommand, fields, origin)
    for key in ("issue", "revoke"):
        path = getattr(entry, key)
        if path is not None and (not path.is_absolute() or not path.is_file() or not os.access(path, os.X_OK)):
            raise UpstreamConfigError(f"{PREFIX}{origin}{key}={str(path)!r}: not an executable file (absolute path)")
    return CommandConfig(name=name, issue=entry.issue, origin=origin, revoke=entry.revoke,
                         timeout_seconds=entry.timeout_seconds)


@dataclass
class _Run:
    returncode: int | None  # None: killed at the timeout
    stdout: bytes
    stderr: str

    @property
    def said(self) -> str:
        lines = [line.strip() for line in self.stderr.splitlines() if line.strip()]
        return lines[-1][:500] if lines else "no reason given"


class CommandUpstream(NamedUpstream):
    """Runs ``issue`` (and ``revoke``) for each order; the journal keeps it to one run."""

    type = "command"

    def __init__(self, config: CommandConfig) -> None:
        self.config = config
        self.name = config.name

    def describe(self) -> dict[str, Any]:
        return self.config.describe()

    async def issue(self, request: IssueRequest, journal: Journal) -> IssuedChain:
        entry = journal.entry
        csr = csr_and_refusal(request, entry)
        if entry.state in (State.finalizing.value, State.valid.value):
            await self._unknown(journal, "the signer stopped while the command ran, or before it stored the result")
        # Recorded before it runs: a command that may have signed is never run again for this order.
        await journal.save(state=State.finalizing.value, finalized_at=utcnow(),
                           orders_created=entry.orders_created + 1)
        env = self._environment({
            "ACME_RA_ORDER_ID": request.order_id,
            "ACME_RA_NAMES": ",".join(i["value"] for i in request.identifiers),
            "ACME_RA_PROFILE": request.profile or "",
            "ACME_RA_PROVISIONER": request.provisioner or "",
        })
        try:
            run = await self._run(self.config.issue, csr.public_bytes(serialization.Encoding.PEM), env)
        except OSError as error:  # it never started: nothing was signed
            await journal.save(state=State.creating.value, finalized_at=None)
            raise UpstreamUnavailable(f"upstream {self.name}: cannot run {self.config.issue}: {error.strerror}") from None
        if run.returncode is None:
            await self._unknown(
                journal, f"the command did not finish within {self.config.timeout_seconds:g}s "
                f"({self.config.setting('timeout_seconds')}) and was stopped",
            )
        if run.returncode == EXIT_RETRY_LATER:
            await journal.save(state=State.creating.value, finalized_at=None)
            raise UpstreamUnavailable(f"upstream {self.name}: the issue command asks to retry later: {run.said}")
        if run.returncode != 0:
            log.warning("issue command refused (exit %s): %s", run.returncode, run.said,
                        extra={"upstream": self.name, "order_id": request.order_id})
            problem = refusal(self.name, run.said, request.identifiers)
            await journal.finish(state=State.invalid.value, error=problem)
            raise UpstreamRejected(problem)
        try:
            chain = self._chain(run.stdout, csr, request.identifiers)
        except UpstreamRejected as rejected:
            await journal.finish(state=State.invalid.value, error=rejected.problem)
            raise
        await journal.finish(state=State.valid.value)
        return chain

    async def _unknown(self, journal: Journal, why: str) -> NoReturn:
        problem = {
            "type": "serverInternal",
            "detail": f"upstream \"{self.name}\": may have signed this order's CSR, but acme-ra has no "
            f"answer ({why}); it does not run the command again, as that could issue a second certificate: "
            "order again",
        }
        log.error("issue command: outcome unknown; not run again (look for the certificate in the CA)",
                  extra={"upstream": self.name, "why": why})
        await journal.finish(state=State.invalid.value, error=problem)
        raise UpstreamRejected(problem)

    def _failed(self, what: str) -> UpstreamRejected:
        """This upstream's own failure, as the order's problem (serverInternal)."""
        return UpstreamRejected({"type": "serverInternal", "detail": f"upstream \"{self.name}\": {what}"})

    def _chain(self, output: bytes, csr: x509.CertificateSigningRequest,
               identifiers: list[dict[str, str]]) -> IssuedChain:
        def bad(what: str) -> UpstreamRejected:
            return self._failed(f"its issue command {what}")

        try:
            certs = x509.load_pem_x509_certificates(output)
        except ValueError:
            raise bad("printed no PEM certificate chain on stdout") from None
        leaf = certs[0]
        if leaf.public_key() != csr.public_key():
            raise bad("printed a certificate for another key than the CSR's")
        try:
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            raise bad("printed a certificate without subjectAltName") from None
        present = {name.lower() for name in san.get_values_for_type(x509.DNSName)}
        present |= {str(address) for address in san.get_values_for_type(x509.IPAddress)}
        missing = [i["value"] for i in identifiers if i["value"].lower() not in present]
        if missing:
            raise bad(f"printed a certificate without {', '.join(missing)}")
        return IssuedChain(
            chain_pem="".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs),
            serial_hex=format(leaf.serial_number, "x"),
            not_before=leaf.not_valid_before_utc,
            not_after=leaf.not_valid_after_utc,
        )

    async def revoke(self, cert_der: bytes, reason: int) -> None:
        if self.config.revoke is None:
            raise self._failed(f"cannot revoke: no {self.config.setting('revoke')} command")
        try:
            cert = x509.load_der_x509_certificate(cert_der)
        except ValueError:
            raise UpstreamRejected({"type": "malformed", "detail": "not a DER certificate"}) from None
        serial = format(cert.serial_number, "x")
        env = self._environment({"ACME_RA_SERIAL": serial, "ACME_RA_REASON": str(reason)})
        try:
            run = await self._run(self.config.revoke, cert.public_bytes(serialization.Encoding.PEM), env)
        except OSError as error:
            raise UpstreamUnavailable(f"upstream {self.name}: cannot run {self.config.revoke}: {error.strerror}") from None
        if run.returncode is None or run.returncode == EXIT_RETRY_LATER:
            raise UpstreamUnavailable(f"upstream {self.name}: revoke command: {run.said if run.returncode else 'timed out'}")
        if run.returncode != 0:
            raise self._failed(f"refused: {run.said}")
        log.info("certificate revoked upstream", extra={"upstream": self.name, "serial": serial, "reason": reason})

    async def check(self) -> None:
        if not os.access(self.config.issue, os.X_OK):
            raise UpstreamUnavailable(f"upstream {self.name}: {self.config.issue} is not executable")

    def _environment(self, values: dict[str, str]) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.upper().startswith(ENV_PREFIX)}
        env.update(values, ACME_RA_UPSTREAM=self.name)
        return env

    async def _run(self, program: Path, stdin: bytes, env: dict[str, str]) -> _Run:
        """Run ``program`` in its own process group (killed whole at the timeout)."""
        process = await asyncio.create_subprocess_exec(
            str(program), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env, start_new_session=True,
        )
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(stdin), self.config.timeout_seconds)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
            return _Run(None, b"", "")
        finally:
            if process.returncode is None:  # cancelled (shutdown): leave nothing running
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
        return _Run(process.returncode, stdout[:MAX_OUTPUT_BYTES], stderr.decode(errors="replace")[-4000:])
