"""deploy/prometheus/alerts.yml passes ``promtool check rules`` and its unit tests
(``alerts_test.yml``), covers what operators asked for, queries only metrics and labels the
services export, and links each alert to its runbook; the Grafana dashboard is valid JSON whose
queries parse and use exported metrics. promtool comes from Debian's ``prometheus`` package: a
missing one fails these tests with the install line, never a skip."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

import acme_ra_frontend.metrics
import acme_ra_signer.metrics
import acme_ra_validator.metrics
import acme_ra_validator.mpic

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
ALERT_TESTS = PROMETHEUS / "alerts_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "acme-ra.json"
DATASOURCES = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
RUNBOOKS = ROOT / "docs" / "observability.md"
INSTALL_LINE = "apt-get update && apt-get install -y prometheus"
# What operators asked the rules to watch (issue: observability), by alert name.
REQUIRED_ALERTS = {
    "AcmeRaHighProblemRate", "AcmeRaServerErrors", "AcmeRaValidationFailuresHigh", "AcmeRaUpstreamFailing",
    "AcmeRaUpstreamSlow", "AcmeRaJetStreamBacklogGrowing", "AcmeRaOrdersStuckProcessing", "AcmeRaServiceDown",
    "AcmeRaNonceStoreGrowing", "AcmeRaPurgeFailing", "AcmeRaCertificatesLapsing",
}
# Series that Prometheus itself or other exporters provide.
EXTERNAL_SERIES = {"up", "ALERTS"}
EXTERNAL_PREFIXES = ("haproxy_",)
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"job", "instance"}
METRIC_MODULES = (acme_ra_frontend.metrics, acme_ra_validator.metrics, acme_ra_validator.mpic, acme_ra_signer.metrics)


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(f"promtool is not installed: these tests need it. Install it with: {INSTALL_LINE}",
                    pytrace=False)
    return found


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)


def exported_series() -> dict[str, set[str]]:
    """Every series name the services' metrics produce, with its label names."""
    series: dict[str, set[str]] = {}
    for module in METRIC_MODULES:
        for metric in vars(module).values():
            if not isinstance(metric, MetricWrapperBase):
                continue
            labels = set(metric._labelnames)  # the declared label names
            name, kind = metric._name, metric._type
            if kind == "counter":
                series[f"{name}_total"] = labels
            elif kind == "histogram":
                series[f"{name}_bucket"] = labels | {"le"}
                series[f"{name}_count"] = series[f"{name}_sum"] = labels
            else:
                series[name] = labels
    return series


def queried_series(expr: str) -> dict[str, set[str]]:
    """The acme_ra_* series an expression selects, with the label names it matches on."""
    found: dict[str, set[str]] = {}
    for match in re.finditer(r"\b(acme_ra_\w+)(\{([^}]*)\})?", expr):
        labels = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", match.group(3) or ""))
        found.setdefault(match.group(1), set()).update(labels)
    return found


def grouping_labels(expr: str) -> set[str]:
    return {label.strip() for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr)
            for label in group.split(",") if label.strip()}


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def github_anchor(heading: str) -> str:
    return re.sub(r"[^a-z0-9 -]", "", heading.strip().lower()).replace(" ", "-")


def test_promtool_checks_the_rules() -> None:
    done = run_promtool("check", "rules", str(ALERTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_the_rules_pass_their_unit_tests() -> None:
    done = run_promtool("test", "rules", str(ALERT_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_prometheus_yml_loads_the_rules() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert ALERTS.name in config.get("rule_files", [])
    done = run_promtool("check", "config", "--syntax-only", str(PROMETHEUS / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_asked_for_exists_is_unit_tested_and_labelled() -> None:
    names = [rule["alert"] for rule in rules()]
    assert len(names) == len(set(names)), names
    assert REQUIRED_ALERTS <= set(names), sorted(REQUIRED_ALERTS - set(names))
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    firing = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert set(names) <= firing, f"alerts never seen firing in alerts_test.yml: {sorted(set(names) - firing)}"
    for rule in rules():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


def test_every_alert_links_to_its_runbook() -> None:
    anchors = {github_anchor(line.lstrip("#")) for line in RUNBOOKS.read_text().splitlines() if line.startswith("#")}
    for rule in rules():
        link = rule["annotations"]["runbook_url"]
        page, _, anchor = link.partition("#")
        assert ROOT / page == RUNBOOKS and anchor == rule["alert"].lower(), link
        assert anchor in anchors, f"{rule['alert']}: no heading '{rule['alert']}' in {RUNBOOKS.name}"


def test_the_rules_query_exported_metrics_and_labels() -> None:
    exported = exported_series()
    for rule in rules():
        expr = rule["expr"]
        if rule["alert"] in ("AcmeRaServiceDown", "AcmeRaNoValidatorRunning"):
            assert "up{" in expr
            continue
        used = queried_series(expr)
        assert used, f"{rule['alert']} queries no acme_ra metric"
        for name, labels in used.items():
            assert name in exported, f"{rule['alert']}: {name} is not exported"
            assert labels <= exported[name], f"{rule['alert']}: {name} has no label {labels - exported[name]}"
        known = set().union(*(exported[name] for name in used)) | TARGET_LABELS
        assert grouping_labels(expr) <= known, f"{rule['alert']}: groups by unknown labels"


def test_the_dashboard_loads_and_its_queries_parse(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["panels"]
    datasource = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]
    exported = exported_series()
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), ids
    expressions = []
    for panel in dashboard["panels"]:
        assert {"type", "title", "gridPos", "targets"} <= set(panel), panel.get("title")
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource["uid"], panel["title"]
            expr = target["expr"]
            expressions.append(expr)
            names = set(re.findall(r"\b[a-zA-Z_][a-zA-Z0-9_]*(?=\s*[{\[])|\b(?:acme_ra|haproxy)_\w+", expr))
            names -= {"by", "without", "rate", "sum", "max", "histogram_quantile"}
            for name in names:
                if name in EXTERNAL_SERIES or name.startswith(EXTERNAL_PREFIXES):
                    continue
                assert name in exported, f"panel {panel['title']!r}: {name} is not exported"
            for name, labels in queried_series(expr).items():
                assert labels <= exported.get(name, set()), f"panel {panel['title']!r}: {name}{labels}"
    assert {name for expr in expressions for name in queried_series(expr)} >= {
        "acme_ra_nonces_redeemed", "acme_ra_signer_revocations_total", "acme_ra_jobs_pending", "acme_ra_orders",
        "acme_ra_validations_total", "acme_ra_upstream_requests_total", "acme_ra_certificates_issued_total",
    }
    # promtool parses every query: as recording rules of a throw-away rules file.
    recorded = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{index}", "expr": expr} for index, expr in enumerate(expressions)
    ]}]}
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(recorded))
    done = run_promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_registry_holds_the_services_metrics() -> None:
    """The names checked above are the ones a scrape shows (the default registry)."""
    registered = {family.name for family in REGISTRY.collect()}
    assert {"acme_ra_http_requests", "acme_ra_validations", "acme_ra_upstream_requests"} <= registered
