"""deploy/k8s: the Kustomize base and the lab overlay render (``kubectl kustomize`` where it is
installed), every object passes ``kubernetes-validate`` (strict), and the manifests say what the
issue asks: a Deployment per service, autoscalers, disruption budgets, network policies, probes
on /healthz and /readyz, secrets referenced and never inlined, a migration Job; their ACME_RA_*
settings and ports agree with the code."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from acme_ra import natsauth
from acme_ra.config import ENV_PREFIX, Settings, parse_host_port
from acme_ra_tools.supervisor import settings_from_env

from .conftest import ROOT
from .test_image import ENTRYPOINT_COMMANDS

K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
LAB = K8S / "overlays" / "lab"
KUBERNETES_VERSION = "1.30.0"
SERVICES = ("frontend", "validator", "signer")
# Every Deployment of acme-ra's own services (the admin API and console besides the three).
DEPLOYMENTS = (*SERVICES, "admin")
# Kinds of cert-manager (a CRD: no schema in kubernetes-validate) used by the lab overlay.
CERT_MANAGER_KINDS = {"Certificate", "Issuer"}
# Settings that hold secrets: never a plain value in a manifest.
SECRET_SETTINGS = {"DATABASE_URL", "SECRET_KEY", "UPSTREAM_EAB_HMAC_KEY", "ADMIN_TOKEN", "NATS_PASSWORD"}


def render(directory: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize`` where kubectl is installed; else the resources listed, unpatched and
    without generated secrets (the checks that need those then say so)."""
    kubectl = shutil.which("kubectl")
    if kubectl:
        result = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True,
                                timeout=120, check=False)
        assert result.returncode == 0, result.stderr
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return list(_resources(directory))


def _resources(directory: Path) -> Iterator[dict[str, Any]]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            yield from _resources(path)
        else:
            yield from (doc for doc in yaml.safe_load_all(path.read_text()) if doc)


@pytest.fixture(scope="module")
def base_docs() -> list[dict[str, Any]]:
    return render(BASE)


@pytest.fixture(scope="module")
def lab_docs() -> list[dict[str, Any]]:
    return render(LAB)


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


@pytest.mark.parametrize("which", ["base_docs", "lab_docs"])
def test_every_object_passes_kubernetes_validate(which: str, request: pytest.FixtureRequest) -> None:
    import kubernetes_validate

    docs = request.getfixturevalue(which)
    assert docs
    for doc in docs:
        if doc["kind"] in CERT_MANAGER_KINDS:
            assert doc["apiVersion"] == "cert-manager.io/v1" and doc["spec"], doc
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {error.message} at {list(error.path)}")


def test_a_deployment_per_service_with_probes(base_docs: list[dict[str, Any]]) -> None:
    config = one(base_docs, "ConfigMap", "acme-ra-config")["data"]
    listen = {"frontend": config["ACME_RA_LISTEN"], "validator": config["ACME_RA_VALIDATOR_LISTEN"],
              "signer": config["ACME_RA_SIGNER_LISTEN"], "admin": config["ACME_RA_ADMIN_LISTEN"]}
    for service in DEPLOYMENTS:
        deployment = one(base_docs, "Deployment", f"acme-ra-{service}")
        spec = deployment["spec"]
        assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
        pod = spec["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        box = container(deployment)
        assert box["args"][0] == service and box["args"][0] in ENTRYPOINT_COMMANDS
        assert box["securityContext"]["readOnlyRootFilesystem"] is True
        ports = {p["name"]: p["containerPort"] for p in box["ports"]}
        port = parse_host_port(listen[service])[1]
        assert port in ports.values(), (service, ports, port)
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            get = box[probe]["httpGet"]
            assert get["path"] == path, (service, probe)
            assert ports[get["port"]] == port, (service, probe)
            assert get.get("scheme", "HTTP") == ("HTTPS" if service == "frontend" else "HTTP")
    frontend = container(one(base_docs, "Deployment", "acme-ra-frontend"))
    frontend_ports = {p["name"]: p["containerPort"] for p in frontend["ports"]}
    assert frontend_ports["metrics"] == parse_host_port(config["ACME_RA_METRICS_LISTEN"])[1]


def test_autoscalers_and_disruption_budgets(base_docs: list[dict[str, Any]]) -> None:
    targets = {hpa["spec"]["scaleTargetRef"]["name"] for hpa in find(base_docs, "HorizontalPodAutoscaler")}
    assert targets == {"acme-ra-frontend", "acme-ra-validator"}
    for hpa in find(base_docs, "HorizontalPodAutoscaler"):
        assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    for service in SERVICES:
        deployment = one(base_docs, "Deployment", f"acme-ra-{service}")
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        budgets = [p for p in find(base_docs, "PodDisruptionBudget")
                   if p["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert len(budgets) == 1, service


def test_secrets_are_referenced_never_inlined(base_docs: list[dict[str, Any]],
                                             lab_docs: list[dict[str, Any]]) -> None:
    assert not find(base_docs, "Secret"), "the base must not carry secrets"
    config = one(base_docs, "ConfigMap", "acme-ra-config")["data"]
    assert not {ENV_PREFIX + name for name in SECRET_SETTINGS} & set(config)
    referenced: set[str] = set()
    for doc in find(base_docs, "Deployment") + find(base_docs, "Job"):
        pod = doc["spec"]["template"]["spec"]
        for box in pod["containers"]:
            for variable in box.get("env", []):
                if variable["name"].removeprefix(ENV_PREFIX) in SECRET_SETTINGS:
                    assert "value" not in variable, (doc["metadata"]["name"], variable)
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    referenced.add(ref["name"])
        referenced |= {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
    assert referenced == {"acme-ra-secrets", "acme-ra-frontend-tls", "acme-ra-nats"}
    # The lab overlay provides them: generated from files, or by cert-manager.
    generated = {s["metadata"]["name"].rsplit("-", 1)[0] for s in find(lab_docs, "Secret")}
    certificates = {c["spec"]["secretName"] for c in find(lab_docs, "Certificate")}
    assert {"acme-ra-secrets", "acme-ra-nats"} <= generated and "acme-ra-frontend-tls" in certificates


def test_the_migration_job(base_docs: list[dict[str, Any]]) -> None:
    job = one(base_docs, "Job", "acme-ra-migrate")
    assert container(job)["args"] == ["migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("OnFailure", "Never")


def _egress_cidrs(policy: dict[str, Any]) -> list[str]:
    return [peer["ipBlock"]["cidr"] for rule in policy["spec"].get("egress", [])
            for peer in rule.get("to", []) if "ipBlock" in peer]


def test_network_policies(base_docs: list[dict[str, Any]], lab_docs: list[dict[str, Any]]) -> None:
    deny = one(base_docs, "NetworkPolicy", "acme-ra-default-deny")["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    # Validators may reach the internet, never private networks.
    internet = one(base_docs, "NetworkPolicy", "acme-ra-validator-internet")
    assert internet["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/component": "validator"}
    assert "0.0.0.0/0" in _egress_cidrs(internet)
    blocks = [peer["ipBlock"] for rule in internet["spec"]["egress"] for peer in rule["to"]]
    assert all({"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"} <= set(b["except"]) for b in blocks
               if b["cidr"] == "0.0.0.0/0")
    # Nothing else gets 0.0.0.0/0; the signer reaches only the upstream (the lab: Pebble's pods).
    for policy in find(base_docs, "NetworkPolicy"):
        if policy["metadata"]["name"] != "acme-ra-validator-internet":
            assert "0.0.0.0/0" not in _egress_cidrs(policy), policy["metadata"]["name"]
    upstream = one(lab_docs, "NetworkPolicy", "acme-ra-signer-upstream")
    if shutil.which("kubectl"):  # the overlay's patch applied (without kubectl: resources unpatched)
        pebble = {"podSelector": {"matchLabels": {"acme-ra.io/role": "upstream"}}}
        assert upstream["spec"]["egress"][0]["to"] == [pebble]
    assert len(upstream["spec"]["egress"]) == 1
    # Only the services reach the database.
    database = one(base_docs, "NetworkPolicy", "acme-ra-database-ingress")
    assert database["spec"]["podSelector"]["matchLabels"] == {"acme-ra.io/role": "database"}
    sources = database["spec"]["ingress"][0]["from"][0]["podSelector"]["matchExpressions"][0]["values"]
    assert set(sources) == {"frontend", "validator", "signer", "admin", "migrate"}
    postgres = one(lab_docs, "Deployment", "postgres")
    assert postgres["spec"]["template"]["metadata"]["labels"]["acme-ra.io/role"] == "database"


@pytest.mark.parametrize("which", ["base_docs", "lab_docs"])
def test_config_names_are_settings_with_valid_values(which: str, request: pytest.FixtureRequest,
                                                     tmp_path: Path) -> None:
    docs = request.getfixturevalue(which)
    data = one(docs, "ConfigMap", "acme-ra-config")["data"]
    fields = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    assert set(data) <= fields, sorted(set(data) - fields)
    existing = tmp_path / "exists"
    existing.write_text("x\n")
    env = {k: (str(existing) if k.endswith("_FILE") else v) for k, v in data.items()}
    settings = settings_from_env(env)
    assert settings.upstream == "acme"
    for doc in find(docs, "Deployment") + find(docs, "Job"):
        for box in doc["spec"]["template"]["spec"]["containers"]:
            for variable in box.get("env", []):
                if variable["name"].startswith(ENV_PREFIX):
                    assert variable["name"] in fields, (doc["metadata"]["name"], variable["name"])


@pytest.mark.parametrize("which", ["base_docs", "lab_docs"])
def test_each_container_reads_valid_settings_from_what_it_mounts(which: str, request: pytest.FixtureRequest,
                                                                 tmp_path: Path) -> None:
    """ConfigMap + the container's env, as the process reads them: every file a setting names is
    on a volume the container mounts, and the settings load (they check that files exist)."""
    docs = request.getfixturevalue(which)
    config = one(docs, "ConfigMap", "acme-ra-config")["data"]
    existing = tmp_path / "exists"
    existing.write_text("x\n")
    file_settings = {ENV_PREFIX + name.upper() for name, field in Settings.model_fields.items()
                     if "Path" in str(field.annotation) and name != "state_dir"}
    for doc in find(docs, "Deployment") + find(docs, "Job"):
        if doc["metadata"]["name"] not in ("acme-ra-frontend", "acme-ra-validator", "acme-ra-signer",
                                           "acme-ra-admin", "acme-ra-migrate"):
            continue
        box = container(doc)
        env = dict(config)
        for variable in box.get("env", []):
            if "value" in variable:
                env[variable["name"]] = variable["value"]
            elif variable["name"] == ENV_PREFIX + "DATABASE_URL":
                env[variable["name"]] = "postgresql+asyncpg://acme_ra:secret@postgres:5432/acme_ra"
        mounts = [m["mountPath"] for m in box.get("volumeMounts", [])]
        for name in file_settings & set(env):
            assert any(env[name].startswith(m.rstrip("/") + "/") for m in mounts), \
                f"{doc['metadata']['name']}: {name}={env[name]} is on no volume it mounts"
            env[name] = str(existing)
        settings = settings_from_env(env)
        if doc["metadata"]["name"] in ("acme-ra-frontend", "acme-ra-signer", "acme-ra-admin"):
            assert settings.secret_key_file is not None  # seals EAB keys and the upstream account key
        if doc["metadata"]["name"] == "acme-ra-frontend":
            assert settings.tls_cert_file is not None


def _selects(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a NetworkPolicy's podSelector (matchLabels, matchExpressions with In) selects
    pods with these labels."""
    selector = policy["spec"]["podSelector"]
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    return all(e["operator"] == "In" and labels.get(e["key"]) in e["values"]
               for e in selector.get("matchExpressions", []))


def _peers(rule: dict[str, Any], direction: str) -> list[dict[str, Any]]:
    return list(rule.get("to" if direction == "egress" else "from", []))


def _allowed_ports(docs: list[dict[str, Any]], labels: dict[str, str], direction: str) -> set[int]:
    return {port["port"] for policy in find(docs, "NetworkPolicy") if _selects(policy, labels)
            for rule in policy["spec"].get(direction, []) for port in rule.get("ports", [])}


def test_the_admin_service(base_docs: list[dict[str, Any]], lab_docs: list[dict[str, Any]]) -> None:
    """The admin API and console: one Deployment behind a ClusterIP Service, never public; its
    policies open the database, NATS and the signer's /readyz to it, and its port to nobody but
    pods labelled acme-ra.io/admin-client; it never mounts the upstream's credentials."""
    config = one(base_docs, "ConfigMap", "acme-ra-config")["data"]
    port = parse_host_port(config["ACME_RA_ADMIN_LISTEN"])[1]
    deployment = one(base_docs, "Deployment", "acme-ra-admin")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "admin"
    box = container(deployment)
    env = {v["name"]: v.get("value") for v in box["env"]}
    # The upstream status: the signer's /readyz, through the signer's Service.
    signer_service = one(base_docs, "Service", "acme-ra-signer")
    signer_port = parse_host_port(config["ACME_RA_SIGNER_LISTEN"])[1]
    assert parse_host_port(env["ACME_RA_SIGNER_LISTEN"]) == ("acme-ra-signer", signer_port)
    assert signer_port in {p["port"] for p in signer_service["spec"]["ports"]}
    mounted = {item["key"] for v in deployment["spec"]["template"]["spec"]["volumes"]
               if "secret" in v and v["secret"]["secretName"] != "acme-ra-nats"
               for item in v["secret"].get("items", [])}
    assert mounted == {"secret-key"}, "the admin service never holds the upstream's EAB key"

    service = one(base_docs, "Service", "acme-ra-admin")
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert service["spec"]["selector"].items() <= labels.items()
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(port, "http")]
    for docs in (base_docs, lab_docs):
        assert not [d for d in find(docs, "Ingress") if "acme-ra-admin" in str(d)], "the admin is not public"
        for svc in find(docs, "Service"):
            assert svc["spec"].get("type", "ClusterIP") == "ClusterIP", svc["metadata"]["name"]

    # Egress: PostgreSQL, NATS and the signer's port only (and DNS, as every pod).
    dns = {53}
    assert _allowed_ports(base_docs, labels, "egress") - dns == {5432, 4222, signer_port}
    signer_labels = one(base_docs, "Deployment", "acme-ra-signer")["spec"]["template"]["metadata"]["labels"]
    to_signer = [peer for policy in find(base_docs, "NetworkPolicy") if _selects(policy, labels)
                 for rule in policy["spec"].get("egress", []) if {p["port"] for p in rule["ports"]} == {signer_port}
                 for peer in _peers(rule, "egress")]
    assert to_signer and all(peer["podSelector"]["matchLabels"].items() <= signer_labels.items() for peer in to_signer)
    # ... and the signer, the database and NATS let it in.
    from_admin = [policy["metadata"]["name"] for policy in find(base_docs, "NetworkPolicy")
                  for rule in policy["spec"].get("ingress", []) for peer in _peers(rule, "ingress")
                  if "podSelector" in peer and "namespaceSelector" not in peer
                  and _selects({"spec": {"podSelector": peer["podSelector"]}}, labels)]
    for name in ("acme-ra-database-ingress", "acme-ra-nats-ingress", "acme-ra-signer-from-admin"):
        assert name in from_admin, name
    assert signer_port in _allowed_ports(base_docs, signer_labels, "ingress")
    # Ingress: its port, from labelled pods of this namespace only (no ipBlock, no namespace).
    rules = [rule for policy in find(base_docs, "NetworkPolicy") if _selects(policy, labels)
             for rule in policy["spec"].get("ingress", [])]
    assert rules and all({p["port"] for p in rule["ports"]} == {port} for rule in rules)
    for rule in rules:
        assert rule["from"] == [{"podSelector": {"matchLabels": {"acme-ra.io/admin-client": "true"}}}]


def test_the_lab_pebble_is_the_compose_lab_pebble(lab_docs: list[dict[str, Any]]) -> None:
    """A release of Pebble, not :latest, and the same in both labs."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    image = container(one(lab_docs, "Deployment", "pebble"))["image"]
    assert image == compose["services"]["pebble"]["image"]
    assert not image.endswith(":latest") and ":" in image


def test_each_service_connects_to_nats_as_its_own_user(base_docs: list[dict[str, Any]],
                                                      lab_docs: list[dict[str, Any]]) -> None:
    """Each Deployment reads its own key of the Secret acme-ra-nats, as its own NATS user; the
    lab's nats reads the users and permissions of acme_ra.natsauth, their passwords from that
    Secret."""
    for service in DEPLOYMENTS:
        deployment = one(base_docs, "Deployment", f"acme-ra-{service}")
        box = container(deployment)
        env = {v["name"]: v.get("value") for v in box["env"]}
        assert env["ACME_RA_NATS_USER"] == service
        mount = next(m for m in box["volumeMounts"] if m["name"] == "nats")
        assert env["ACME_RA_NATS_PASSWORD_FILE"] == f"{mount['mountPath']}/password" and mount["readOnly"]
        volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "nats")
        assert volume["secret"]["secretName"] == "acme-ra-nats"
        assert volume["secret"]["items"] == [{"key": service, "path": "password"}], service
    assert (LAB / "nats-server.conf").read_text() == natsauth.server_config(None), (
        "deploy/k8s/overlays/lab/nats-server.conf: python -m acme_ra.natsauth config > it")
    keys = {line.split("=", 1)[0] for line in (LAB / "lab-nats.env").read_text().splitlines()
            if line and not line.startswith("#")}
    assert keys == {*natsauth.ROLES, natsauth.OPERATOR}
    nats = container(one(lab_docs, "Deployment", "nats"))
    assert nats["args"][:2] == ["-c", "/etc/nats/nats-server.conf"]
    secret_env = {v["name"]: v["valueFrom"]["secretKeyRef"] for v in nats["env"]}
    for role in keys:
        ref = secret_env[natsauth.password_variable(role)]
        assert ref["key"] == role and ref["name"].startswith("acme-ra-nats")
