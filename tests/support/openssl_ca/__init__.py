"""A throw-away ``openssl ca`` behind acme-ra's ``command`` upstream: ``issue`` and ``revoke``
(shell scripts beside this file) and the CA directory they use (``OPENSSL_CA_DIR``)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from cryptography import x509

HERE = Path(__file__).parent
ISSUE = HERE / "issue"
REVOKE = HERE / "revoke"

CONFIG = """\
[ca]
default_ca = test_ca

[test_ca]
dir = {dir}
database = $dir/index.txt
new_certs_dir = $dir/certs
certificate = $dir/ca.pem
private_key = $dir/ca.key
rand_serial = yes
default_md = sha256
policy = policy_any
unique_subject = no
copy_extensions = none

[policy_any]
commonName = supplied

[req]
distinguished_name = dn
[dn]
"""


class OpensslCa:
    """A root CA in ``directory`` that the scripts sign with; ``zone``: the only names it signs."""

    def __init__(self, directory: Path, zone: str) -> None:
        self.dir = directory
        self.zone = zone
        (directory / "certs").mkdir(parents=True)
        (directory / "index.txt").write_text("")
        (directory / "openssl.cnf").write_text(CONFIG.format(dir=directory))
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(directory / "ca.key"), "-out", str(directory / "ca.pem"), "-days", "30",
             "-subj", "/CN=openssl ca test root", "-config", str(directory / "openssl.cnf"),
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
            check=True, capture_output=True,
        )

    @property
    def environment(self) -> dict[str, str]:
        return {"OPENSSL_CA_DIR": str(self.dir), "OPENSSL_CA_ZONE": self.zone}

    @property
    def root(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate((self.dir / "ca.pem").read_bytes())

    def index(self) -> dict[str, str]:
        """Serial (lowercase hex, as acme-ra stores it) -> V (valid) or R (revoked)."""
        entries = {}
        for line in (self.dir / "index.txt").read_text().splitlines():
            fields = line.split("\t")
            entries[fields[3].lower().lstrip("0")] = fields[0]
        return entries
