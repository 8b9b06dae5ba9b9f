"""A misspelled ACME_RA_* variable is never silently ignored: every service and ``acme-ra``
warn at start-up naming the closest setting, and refuse to start under ACME_RA_STRICT_CONFIG=true
(one line, exit 2). Variables that are legitimately ACME_RA_* but no setting (the test suite's,
the benchmark's) are never reported, and nothing the project itself sets or documents is."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from acme_ra.config import COMMAND_UPSTREAM_VARIABLES, NOT_SETTINGS_PREFIXES, setting_names, unknown_variables
from tests.support.lab import base_environment

ROOT = Path(__file__).resolve().parents[2]
SERVICE_MODULES = ["acme_ra_frontend", "acme_ra_validator", "acme_ra_signer", "acme_ra_admin"]
# Where ACME_RA_* names are written: code, deployment files, docs.
SCANNED = ["libs", "services", "tests", "bench", "deploy", "scripts", "docs", "README.md", "Makefile",
           "docker-compose.yml", ".ci"]
# Names in prose that are not variables: configdoc's examples of its comment grammar, Python
# constants and prefixes that end in "_" (ACME_RA_HTTP_* and the like).
NOT_VARIABLES = {"ACME_RA_A", "ACME_RA_B", "ACME_RA_X", "ACME_RA_X_HTTP_PORT", "ACME_RA_NAME",
                 "ACME_RA_NAME_SUFFIX", "ACME_RA_SERVICES"}


def test_a_misspelling_names_the_closest_setting() -> None:
    assert unknown_variables({"ACME_RA_POLICY_ALOW": ".example.edu", "PATH": "/bin"}) == [
        "unknown variable ACME_RA_POLICY_ALOW (did you mean ACME_RA_POLICY_ALLOW?)"]
    assert unknown_variables({"acme_ra_databse_url": "x"}) == [
        "unknown variable acme_ra_databse_url (did you mean ACME_RA_DATABASE_URL?)"]
    assert unknown_variables({"ACME_RA_QQQQQQQQ": "1"}) == [
        "unknown variable ACME_RA_QQQQQQQQ (see docs/configuration.md)"]


def test_settings_and_the_suites_own_variables_are_not_reported() -> None:
    environ = dict.fromkeys(setting_names(), "")
    environ |= {"ACME_RA_TEST_DATABASE_URL": "", "ACME_RA_TEST_POSTGRES_BIN": "", "ACME_RA_HYPOTHESIS_EXAMPLES": "",
                "ACME_RA_BENCH_DATABASE_URL": "", "acme_ra_listen": ""}
    assert unknown_variables(environ) == []


def test_every_acme_ra_name_the_project_writes_is_known() -> None:
    done = subprocess.run(["grep", "-rhoE", f"--exclude={Path(__file__).name}", r"ACME_RA_[A-Z0-9_]*[A-Z0-9]",
                           *SCANNED], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    names = set(done.stdout.split())
    assert len(names) > 50, done.stderr
    known = set(setting_names())
    stray = {name for name in names - known - NOT_VARIABLES - COMMAND_UPSTREAM_VARIABLES
             if not (name + "_").startswith(NOT_SETTINGS_PREFIXES)
             # "ACME_RA_HTTP_*", "ACME_RA_UPSTREAM_DNS_TSIG_*": prefixes of settings in prose
             and not any(setting.startswith(name + "_") for setting in known)}
    assert stray == set()


def _run(argv: list[str], **variables: str) -> subprocess.CompletedProcess[str]:
    env = base_environment() | {"ACME_RA_STATE_DIR": "/nonexistent/acme-ra-config-test"} | variables
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("module", SERVICE_MODULES)
def test_every_service_refuses_a_misspelling_under_strict_config(module: str) -> None:
    done = _run([sys.executable, "-m", module], ACME_RA_STRICT_CONFIG="true", ACME_RA_VALIDATOR_LISTN="127.0.0.1:1")
    assert done.returncode == 2, done.stderr
    assert done.stderr == ("acme-ra: invalid configuration: unknown variable ACME_RA_VALIDATOR_LISTN "
                           "(did you mean ACME_RA_VALIDATOR_LISTEN?); ACME_RA_STRICT_CONFIG=true refuses it\n")


def test_acme_ra_warns_and_goes_on_without_strict_config() -> None:
    done = _run([sys.executable, "-m", "acme_ra_tools.cli", "config", "check"], ACME_RA_EAB_REQURED="true",
                ACME_RA_TEST_ANYTHING="1")
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "acme-ra: warning: unknown variable ACME_RA_EAB_REQURED (did you mean ACME_RA_EAB_REQUIRED?)",
        "configuration is valid"]


def test_strict_config_counts_the_others_in_its_one_line() -> None:
    done = _run([sys.executable, "-m", "acme_ra_tools.cli", "config", "check"], ACME_RA_STRICT_CONFIG="1",
                ACME_RA_LISTN="x", ACME_RA_LISEN="y")
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1
    assert re.fullmatch(r"acme-ra: invalid configuration: unknown variable ACME_RA_LISEN \(did you mean "
                        r"ACME_RA_LISTEN\?\) and 1 more; ACME_RA_STRICT_CONFIG=true refuses it\n", done.stderr)


def test_a_step_ca_policy_rule_is_understood_and_a_stray_star_refused_in_one_line() -> None:
    good = _run([sys.executable, "-m", "acme_ra_tools.cli", "config", "check"], ACME_RA_POLICY_ALLOW="*.example.edu")
    assert good.returncode == 0, good.stderr
    bad = _run([sys.executable, "-m", "acme_ra_tools.cli", "config", "check"], ACME_RA_POLICY_ALLOW="www.*.example.edu")
    assert bad.returncode == 2
    assert bad.stderr.startswith("acme-ra: invalid configuration: ACME_RA_POLICY_ALLOW='www.*.example.edu': "
                                 "policy rule 'www.*.example.edu': '*' only as the whole first label")
    assert len(bad.stderr.splitlines()) == 1
