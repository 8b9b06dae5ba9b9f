"""certbot (from PyPI, in this virtualenv) against a running topology, and what it got."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store

from tests.support.lab import Lab

CERTBOT = Path(sys.executable).parent / "certbot"
HOOKS = Path(__file__).parent / "hooks"
AUTH_HOOK = HOOKS / "dns-auth-hook"
CLEANUP_HOOK = HOOKS / "dns-cleanup-hook"
# certbot's whole run, polling included (seconds).
CERTBOT_TIMEOUT_SECONDS = 180
CERT_NAME = "test"


@dataclass
class CertbotRun:
    args: list[str]
    returncode: int
    output: str
    config_dir: Path

    @property
    def live(self) -> Path:
        return self.config_dir / "live" / CERT_NAME

    def chain(self) -> list[x509.Certificate]:
        return x509.load_pem_x509_certificates((self.live / "fullchain.pem").read_bytes())

    def describe(self) -> str:
        return f"certbot exited {self.returncode}: {' '.join(self.args)}\n{self.output}"


def trust_environment(ca_bundle: Path) -> dict[str, str]:
    """This machine sets its own CA variables globally: certbot must trust the lab CA instead."""
    env = dict(os.environ)
    for name in ("CURL_CA_BUNDLE", "SSL_CERT_DIR"):
        env.pop(name, None)
    env["REQUESTS_CA_BUNDLE"] = str(ca_bundle)
    env["SSL_CERT_FILE"] = str(ca_bundle)
    return env


def certonly(lab: Lab, names: list[str], challenge: str, workdir: Path,
             auth_hook: Path | str = AUTH_HOOK, trust: Path | None = None,
             extra_args: list[str] | None = None) -> CertbotRun:
    """``certbot certonly`` for ``names``: http-01 standalone or dns-01 with the manual hooks;
    ``trust``: the root of the frontend's TLS certificate, when not the lab's own CA bundle;
    ``extra_args``: more of certbot's options (``--preferred-profile P``, ...)."""
    config_dir = workdir / "config"
    args = [
        str(CERTBOT), "certonly", "--non-interactive", "--agree-tos", "--register-unsafely-without-email",
        "--server", lab.directory_url, "--cert-name", CERT_NAME,
        "--config-dir", str(config_dir), "--work-dir", str(workdir / "work"), "--logs-dir", str(workdir / "logs"),
    ]
    for name in names:
        args += ["-d", name]
    if challenge == "http-01":
        args += ["--standalone", "--http-01-port", str(lab.ports.http01)]
    elif challenge == "dns-01":
        args += ["--manual", "--preferred-challenges", "dns",
                 "--manual-auth-hook", str(auth_hook), "--manual-cleanup-hook", str(CLEANUP_HOOK)]
    else:
        raise ValueError(challenge)
    args += extra_args or []
    env = trust_environment(trust or lab.ca_bundle)
    env["TEST_DNS_TXT_DIR"] = str(lab.txt_dir)
    completed = subprocess.run(args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, timeout=CERTBOT_TIMEOUT_SECONDS, check=False)
    return CertbotRun(args, completed.returncode, completed.stdout, config_dir)


def dns_names(certificate: x509.Certificate) -> set[str]:
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(san.get_values_for_type(x509.DNSName))


def verify_chain(chain: list[x509.Certificate], ca_bundle: Path, name: str) -> None:
    """The leaf is valid for ``name`` and chains to a certificate of ``ca_bundle`` (raises if not)."""
    roots = x509.load_pem_x509_certificates(ca_bundle.read_bytes())
    verifier = (
        PolicyBuilder()
        .store(Store(roots))
        .time(dt.datetime.now(dt.UTC))
        .build_server_verifier(x509.DNSName(name))
    )
    verifier.verify(chain[0], chain[1:])


def revoke(lab: Lab, run: CertbotRun, workdir: Path, reason: str = "keycompromise",
           trust: Path | None = None) -> CertbotRun:
    """``certbot revoke`` of the certificate ``run`` got (with its account)."""
    args = [
        str(CERTBOT), "revoke", "--non-interactive", "--no-delete-after-revoke", "--server", lab.directory_url,
        "--cert-name", CERT_NAME, "--reason", reason, "--config-dir", str(run.config_dir),
        "--work-dir", str(workdir / "work"), "--logs-dir", str(workdir / "logs"),
    ]
    completed = subprocess.run(args, env=trust_environment(trust or lab.ca_bundle), stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               timeout=CERTBOT_TIMEOUT_SECONDS, check=False)
    return CertbotRun(args, completed.returncode, completed.stdout, run.config_dir)
