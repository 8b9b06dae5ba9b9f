"""The lab CA: files, modes, reloading, concurrent creation, a half-created CA."""

from __future__ import annotations

import datetime as dt
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from acme_ra_signer import labca

FILES = ("root.pem", "root.key", "intermediate.pem", "intermediate.key")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def test_creates_root_and_intermediate_with_private_modes(tmp_path: Path) -> None:
    directory = tmp_path / "var" / "lab-ca"
    ca, created = labca.load_or_create(directory)

    assert created
    assert all((directory / name).is_file() for name in FILES)
    assert mode(directory) == 0o700
    assert mode(directory / "root.key") == 0o600
    assert mode(directory / "intermediate.key") == 0o600
    assert not [p for p in directory.iterdir() if p.name.endswith(".tmp")]

    root_cn = ca.root.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    assert str(root_cn).startswith("acme-ra lab root ")
    ca.root.verify_directly_issued_by(ca.root)
    ca.intermediate.verify_directly_issued_by(ca.root)
    constraints = ca.intermediate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    root_life = ca.root.not_valid_after_utc - ca.root.not_valid_before_utc
    intermediate_life = ca.intermediate.not_valid_after_utc - ca.intermediate.not_valid_before_utc
    assert dt.timedelta(days=3649) < root_life <= dt.timedelta(days=3651)
    assert dt.timedelta(days=5 * 365 - 1) < intermediate_life <= dt.timedelta(days=5 * 365 + 1)
    assert ca.intermediate_key.public_key() == ca.intermediate.public_key()


def test_reload_gives_the_same_ca(tmp_path: Path) -> None:
    first, created = labca.load_or_create(tmp_path / "lab-ca")
    again, created_again = labca.load_or_create(tmp_path / "lab-ca")

    assert created and not created_again
    assert fingerprint(again.root) == fingerprint(first.root)
    assert fingerprint(again.intermediate) == fingerprint(first.intermediate)
    assert again.intermediate_key.private_numbers() == first.intermediate_key.private_numbers()


CHILD = """
import sys, time
from pathlib import Path
from cryptography.hazmat.primitives import hashes
from acme_ra_signer import labca
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.001)
ca, created = labca.load_or_create(Path(sys.argv[1]))
print(ca.root.fingerprint(hashes.SHA256()).hex(), ca.intermediate.fingerprint(hashes.SHA256()).hex(), created)
"""


def test_concurrent_creation_from_several_processes_gives_one_ca(tmp_path: Path) -> None:
    directory = tmp_path / "lab-ca"
    go = tmp_path / "go"
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(directory), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    time.sleep(1.0)  # let every child import and start polling
    go.touch()
    outputs = [child.communicate(timeout=60) for child in children]

    assert [child.returncode for child in children] == [0] * 4, outputs
    lines = [out.split() for out, _ in outputs]
    assert len({(root, intermediate) for root, intermediate, _ in lines}) == 1
    assert [created for _, _, created in lines].count("True") == 1
    on_disk, _ = labca.load_or_create(directory)
    assert fingerprint(on_disk.root) == lines[0][0]


def test_half_created_ca_is_completed_not_replaced(tmp_path: Path) -> None:
    directory = tmp_path / "lab-ca"
    first, _ = labca.load_or_create(directory)
    (directory / "intermediate.pem").unlink()  # as if the process died before the last rename

    again, created = labca.load_or_create(directory)

    assert created
    assert fingerprint(again.root) == fingerprint(first.root)
    assert fingerprint(again.intermediate) != fingerprint(first.intermediate)
    again.intermediate.verify_directly_issued_by(again.root)


def test_a_key_that_does_not_match_its_certificate_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "lab-ca"
    labca.load_or_create(directory)
    other = tmp_path / "other"
    labca.load_or_create(other)
    os.replace(other / "intermediate.key", directory / "intermediate.key")

    with pytest.raises(labca.LabCAError, match="is not the key of"):
        labca.load_or_create(directory)
