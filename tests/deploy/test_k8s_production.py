"""deploy/k8s/overlays/production: rendered by ``kubectl kustomize``, every object of Kubernetes'
own kinds passes ``kubernetes-validate`` (strict) for 1.30 and the newest release it knows; the
ServiceMonitor and the KEDA ScaledObject (CRDs whose schemas are not available offline) are
checked field by field against what they point at. The overlay says what the issue asks: an
Ingress that keeps the client's address, a ServiceMonitor, validators scaled by KEDA on their
JetStream backlog, a migration Job per release, NetworkPolicies that let OTLP out, and a 3-node
NATS cluster (its configuration checked by the real nats-server) with R3 streams."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from acme_ra import __version__, bus, natsauth
from acme_ra.config import ENV_PREFIX, Settings, parse_host_port
from acme_ra_tools.supervisor import settings_from_env

from .test_k8s import K8S, _allowed_ports, _selects, container, find, one

PRODUCTION = K8S / "overlays" / "production"
# Kubernetes 1.30 and the newest release kubernetes-validate has schemas for.
KUBERNETES_VERSIONS = ("1.30.0", "latest")
# CRDs: no schema offline; checked below against the objects they name.
CRD_KINDS = {"ServiceMonitor": "monitoring.coreos.com/v1", "ScaledObject": "keda.sh/v1alpha1"}
NAMESPACE = "acme-ra"
NATS_NODES = 3
# The Secrets an operator creates (never in the overlay).
SECRETS = {"acme-ra-secrets", "acme-ra-frontend-tls", "acme-ra-nats", "acme-ra-ingress-tls"}


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl not installed (it renders the overlays): apt-get install -y kubernetes-client",
                    pytrace=False)
    return found


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    done = subprocess.run([kubectl(), "kustomize", str(PRODUCTION)], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_passes_kubernetes_validate(docs: list[dict[str, Any]], version: str) -> None:
    import kubernetes_validate
    from kubernetes_validate import utils

    version = utils.latest_version() if version == "latest" else version
    assert utils.Version(version) >= utils.Version("1.30.0")
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            assert doc["apiVersion"] == CRD_KINDS[doc["kind"]] and doc["spec"], doc
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{version}: {doc['kind']}/{doc['metadata']['name']}: {error.message} at {list(error.path)}")
    assert {doc["metadata"].get("namespace", NAMESPACE) for doc in docs if doc["kind"] != "Namespace"} == {NAMESPACE}
    assert not find(docs, "Secret"), "production secrets come from the operator's secret store"


def config(docs: list[dict[str, Any]]) -> dict[str, str]:
    return dict(one(docs, "ConfigMap", "acme-ra-config")["data"])


def test_the_settings_are_valid(docs: list[dict[str, Any]], tmp_path: Path) -> None:
    data = config(docs)
    fields = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    assert set(data) <= fields, sorted(set(data) - fields)
    existing = tmp_path / "exists"
    existing.write_text("x\n")
    env = data | {"ACME_RA_DATABASE_URL": "postgresql+asyncpg://acme_ra@db.example.edu/acme_ra",
                  "ACME_RA_SECRET_KEY_FILE": str(existing)}
    settings = settings_from_env(env)
    assert settings.strict_config and settings.eab_required and settings.upstream == "acme"
    assert settings.nats_stream_replicas == NATS_NODES
    # Every Secret the pods read is the operator's to create; the comment at the top names each.
    referenced = set()
    for doc in find(docs, "Deployment") + find(docs, "Job") + find(docs, "StatefulSet"):
        pod = doc["spec"]["template"]["spec"]
        for box in pod["containers"]:
            referenced |= {v["valueFrom"]["secretKeyRef"]["name"] for v in box.get("env", [])
                           if "secretKeyRef" in v.get("valueFrom", {})}
        referenced |= {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
    referenced |= {tls["secretName"] for ingress in find(docs, "Ingress") for tls in ingress["spec"]["tls"]}
    assert referenced == SECRETS
    header = (PRODUCTION / "kustomization.yaml").read_text().split("\napiVersion:", 1)[0]
    assert all(name in header for name in SECRETS)


def test_the_ingress_keeps_the_client_address(docs: list[dict[str, Any]]) -> None:
    """ingress-nginx re-encrypts to the frontends' HTTPS port and sends X-Forwarded-For, which the
    frontends trust from the controller's pods only; the base's open port 8443 is narrowed to them."""
    [ingress] = find(docs, "Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/backend-protocol"] == "HTTPS"
    [rule] = ingress["spec"]["rules"]
    settings = config(docs)
    assert settings["ACME_RA_EXTERNAL_URL"] == f"https://{rule['host']}"
    assert ingress["spec"]["tls"][0]["hosts"] == [rule["host"]]
    [path] = rule["http"]["paths"]
    backend = path["backend"]["service"]
    service = one(docs, "Service", backend["name"])
    port = next(p for p in service["spec"]["ports"] if p["name"] == backend["port"]["name"])
    frontend = one(docs, "Deployment", "acme-ra-frontend")
    ports = {p["name"]: p["containerPort"] for p in container(frontend)["ports"]}
    assert ports[port["targetPort"]] == parse_host_port(settings["ACME_RA_LISTEN"])[1]
    # The frontend trusts X-Forwarded-For from a network, never from everyone.
    trusted = settings["ACME_RA_TRUSTED_PROXIES"]
    assert trusted and "0.0.0.0/0" not in trusted and "::/0" not in trusted
    labels = frontend["spec"]["template"]["metadata"]["labels"]
    rules = [rule for policy in find(docs, "NetworkPolicy") if _selects(policy, labels)
             for rule in policy["spec"].get("ingress", []) if 8443 in {p["port"] for p in rule.get("ports", [])}]
    assert rules and all(rule.get("from") for rule in rules), "the ACME port is open to every pod"
    for rule in rules:
        for peer in rule["from"]:
            assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "ingress-nginx"}


def test_the_service_monitor_scrapes_every_replica(docs: list[dict[str, Any]]) -> None:
    [monitor] = find(docs, "ServiceMonitor")
    selector = monitor["spec"]["selector"]
    selected = [svc for svc in find(docs, "Service")
                if _selects({"spec": {"podSelector": selector}}, svc["metadata"].get("labels", {}))]
    assert {svc["metadata"]["name"] for svc in selected} == {"acme-ra-frontend", "acme-ra-validator",
                                                             "acme-ra-signer"}
    endpoints = {e["port"]: e for e in monitor["spec"]["endpoints"]}
    assert all(e["path"] == "/metrics" for e in endpoints.values())
    settings = config(docs)
    metrics_ports = {"acme-ra-frontend": parse_host_port(settings["ACME_RA_METRICS_LISTEN"])[1],
                     "acme-ra-validator": parse_host_port(settings["ACME_RA_VALIDATOR_LISTEN"])[1],
                     "acme-ra-signer": parse_host_port(settings["ACME_RA_SIGNER_LISTEN"])[1]}
    for svc in selected:
        scraped = [p for p in svc["spec"]["ports"] if p["name"] in endpoints]
        assert [p["port"] for p in scraped] == [metrics_ports[svc["metadata"]["name"]]], svc["metadata"]["name"]
        # ... and the namespace "monitoring" may reach it.
        component = svc["metadata"]["labels"]["app.kubernetes.io/component"]
        deployment = one(docs, "Deployment", f"acme-ra-{component}")
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert metrics_ports[svc["metadata"]["name"]] in _allowed_ports(docs, labels, "ingress")


def test_keda_scales_the_validators_on_their_backlog(docs: list[dict[str, Any]]) -> None:
    [scaled] = find(docs, "ScaledObject")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == "acme-ra-validator"
    one(docs, "Deployment", "acme-ra-validator")
    assert 2 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
    # One autoscaler per Deployment: KEDA's, not the base's CPU one.
    assert "acme-ra-validator" not in {h["spec"]["scaleTargetRef"]["name"] for h in find(docs, "HorizontalPodAutoscaler")}
    [trigger] = spec["triggers"]
    assert trigger["type"] == "nats-jetstream"
    meta = trigger["metadata"]
    assert (meta["stream"], meta["consumer"]) == (bus.JOBS_STREAM, bus.DURABLE_VALIDATOR)
    assert meta["account"] == "$G"  # users without accounts: NATS's global account
    assert int(meta["lagThreshold"]) > 0
    host, port = parse_host_port(meta["natsServerMonitoringEndpoint"])
    name, namespace = host.split(".")[:2]
    assert namespace == NAMESPACE
    service = one(docs, "Service", name)
    assert port in {p["port"] for p in service["spec"]["ports"] if p["name"] == "monitor"}
    nats = one(docs, "StatefulSet", "nats")
    labels = nats["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    keda_rules = [rule for policy in find(docs, "NetworkPolicy") if _selects(policy, labels)
                  for rule in policy["spec"].get("ingress", [])
                  if any(peer.get("namespaceSelector", {}).get("matchLabels") == {"kubernetes.io/metadata.name": "keda"}
                         for peer in rule.get("from", []))]
    assert keda_rules and all({p["port"] for p in rule["ports"]} == {port} for rule in keda_rules)


def test_the_migration_runs_in_a_job_per_release(docs: list[dict[str, Any]]) -> None:
    """A Job's pod template cannot change: the Job of a release carries the release's version, as
    the image does, so that an upgrade applies a new Job instead of failing on the old one."""
    [job] = find(docs, "Job")
    images = {container(d)["image"] for d in find(docs, "Deployment")} | {container(job)["image"]}
    [image] = images
    tag = image.rsplit(":", 1)[1]
    assert tag == __version__, f"release {__version__}: set the overlay's image tag and the Job's name"
    assert job["metadata"]["name"] == f"acme-ra-migrate-{tag}"
    assert container(job)["args"] == ["migrate"]
    assert job["spec"]["ttlSecondsAfterFinished"] > 0  # finished Jobs of older releases go away


def test_network_policies_let_otlp_out(docs: list[dict[str, Any]]) -> None:
    otel = one(docs, "ConfigMap", "acme-ra-otel")["data"]
    assert otel["OTEL_TRACES_EXPORTER"] == "otlp"
    endpoint = otel["OTEL_EXPORTER_OTLP_ENDPOINT"]
    otlp_port = int(endpoint.rsplit(":", 1)[1])
    namespace = endpoint.split("//", 1)[1].split(".")[1]
    for component in ("frontend", "validator", "signer", "admin"):
        deployment = one(docs, "Deployment", f"acme-ra-{component}")
        box = container(deployment)
        assert {"configMapRef": {"name": "acme-ra-otel"}} in box["envFrom"], component
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        peers = [peer for policy in find(docs, "NetworkPolicy") if _selects(policy, labels)
                 for rule in policy["spec"].get("egress", []) if otlp_port in {p["port"] for p in rule["ports"]}
                 for peer in rule["to"]]
        assert peers, f"{component}: OTLP to {endpoint} is blocked"
        assert all(peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": namespace}
                   for peer in peers)
    # PostgreSQL is outside: reached at its addresses, not at pods of the namespace.
    services = one(docs, "NetworkPolicy", "acme-ra-services-egress")
    database = [rule for rule in services["spec"]["egress"] if {p["port"] for p in rule["ports"]} == {5432}]
    assert database and all("ipBlock" in peer and peer["ipBlock"]["cidr"] != "0.0.0.0/0"
                            for rule in database for peer in rule["to"])


def test_the_nats_cluster(docs: list[dict[str, Any]], tmp_path: Path) -> None:
    """Three nodes whose routes name each other; acme-ra's URL names all three; the users are
    acme_ra.natsauth's with every password from the Secret; nats-server accepts the configuration."""
    nats = one(docs, "StatefulSet", "nats")
    assert nats["spec"]["replicas"] == NATS_NODES == int(config(docs)["ACME_RA_NATS_STREAM_REPLICAS"])
    headless = one(docs, "Service", nats["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    names = [f"nats-{i}.{headless['metadata']['name']}" for i in range(NATS_NODES)]
    conf = (PRODUCTION / "nats-cluster.conf").read_text()
    assert [line.strip() for line in conf.splitlines() if "nats-route://" in line] == [
        f"nats-route://{name}:6222" for name in names]
    assert config(docs)["ACME_RA_NATS_URL"].split(",") == [f"nats://{name}:4222" for name in names]
    assert (PRODUCTION / "nats-auth.conf").read_text() == natsauth.server_config(None), (
        "deploy/k8s/overlays/production/nats-auth.conf: python -m acme_ra.natsauth config > it")
    box = container(nats)
    secret_env = {v["name"]: v["valueFrom"]["secretKeyRef"] for v in box["env"]}
    for role in (*natsauth.ROLES, natsauth.OPERATOR):
        assert secret_env[natsauth.password_variable(role)] == {"name": "acme-ra-nats", "key": role}
    [config_map] = [c for c in find(docs, "ConfigMap") if c["metadata"]["name"].startswith("nats-config")]
    mount = next(m for m in box["volumeMounts"] if m["name"] == "config")
    assert box["args"] == ["-c", f"{mount['mountPath']}/nats-cluster.conf"]
    labels = nats["spec"]["template"]["metadata"]["labels"]
    assert 6222 in _allowed_ports(docs, labels, "ingress") and 6222 in _allowed_ports(docs, labels, "egress")
    # nats-server itself reads it (as node nats-0, its store and the passwords of this test).
    for name, text in config_map["data"].items():
        (tmp_path / name).write_text(text.replace("store_dir: /data", f"store_dir: {tmp_path / 'data'}"))
    binary = Path(sys.executable).parent / "nats-server"
    env = {"HOSTNAME": "nats-0"} | {natsauth.password_variable(role): "a-password"
                                    for role in (*natsauth.ROLES, natsauth.OPERATOR)}
    done = subprocess.run([str(binary), "-c", str(tmp_path / "nats-cluster.conf"), "-t"], env=env,
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
