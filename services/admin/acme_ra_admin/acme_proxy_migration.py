"""``acme-ra config from-acme-proxy ca.json``: the acme-ra settings equivalent to an esnet/acme-proxy
``ca.json`` (step-ca with ``authority.type: externalcas``), as an environment file; with
``--config-file``, the upstream goes to an ``ACME_RA_CONFIG_FILE`` instead, which is how several
acme-proxy instances (one per upstream profile) become one acme-ra.

Secrets are never printed: the EAB HMAC key and the TSIG secret go to files (``--secrets-dir``
writes them, mode 0600; otherwise a note says which file to write) and the environment names the
``*_FILE`` setting. Everything acme-ra cannot carry over is one note each (stderr), never a trace.
acme_proxy_files.py combines several and writes the files; docs/migrating-from-acme-proxy.md is the
operator's page.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Where the secret files go when --secrets-dir is not given (the operator writes them).
DEFAULT_SECRETS_DIR = Path("/etc/acme-ra")
EAB_HMAC_KEY_FILE_NAME = "eab-hmac.key"  # after the upstream's name: upstream-eab-hmac.key
TSIG_SECRET_FILE_NAME = "tsig.secret"
# Where the DNS hook goes when the lego provider has no acme-ra publisher.
HOOK_PATH = "/etc/acme-ra/dns-hook"
# lego's rfc2136 provider signs with HMAC-SHA1 when RFC2136_TSIG_ALGORITHM is unset.
LEGO_DEFAULT_TSIG_ALGORITHM = "hmac-sha1"
# step-ca challenge names acme-ra offers (ACME_RA_CHALLENGE_TYPES).
CHALLENGE_TYPES = ("http-01", "dns-01", "tls-alpn-01")

# Members of ca.json this module maps, or that need nothing in acme-ra (its behaviour covers them).
COVERED_TOP = {"address", "dnsNames", "commonName", "logger", "authority"}
COVERED_AUTHORITY = {"type", "config", "provisioners", "template", "backdate", "policy"}
COVERED_CONFIG = {"ca_url", "account_email", "eab_kid", "eab_hmac_key", "dns01_txt", "metrics", "certlifetime"}
COVERED_PROVISIONER = {"type", "name", "claims", "options", "challenges", "requireEAB"}
# step-ca members acme-ra has no equivalent for, and why (one note each when present).
WITHOUT_EQUIVALENT = {
    "db": "acme-proxy's accounts do not carry over: clients register again at their next renewal "
          "(docs/migrating-from-acme-proxy.md, Cut-over)",
    "tls": "acme-ra's listener sets its own TLS versions and ciphers (TLS 1.2 and 1.3)",
    "root": "acme-ra holds no CA key or certificate",
    "crt": "acme-ra holds no CA key or certificate",
    "key": "acme-ra holds no CA key or certificate",
    "intermediates": "acme-ra holds no CA key or certificate",
    "federatedRoots": "acme-ra holds no CA key or certificate",
    "password": "acme-ra holds no CA key or certificate",
    "insecureAddress": "acme-ra serves ACME over HTTPS only",
    "templates": "SSH templates: acme-ra issues X.509 certificates only",
    "crl": "revocation goes to the upstream CA, which publishes the CRL",
}


class MigrationError(Exception):
    """The ca.json cannot be read: one line, exit status 2."""


# An upstream's settings as ACME_RA_CONFIG_FILE spells them -> the environment variable (the
# "default" upstream). dns_update and dns_nameservers are spelled out in upstream_environment().
UPSTREAM_VARIABLES = {
    "directory_url": "ACME_RA_UPSTREAM_DIRECTORY_URL",
    "email": "ACME_RA_UPSTREAM_EMAIL",
    "eab_kid": "ACME_RA_UPSTREAM_EAB_KID",
    "eab_hmac_key_file": "ACME_RA_UPSTREAM_EAB_HMAC_KEY_FILE",
    "cert_lifetime_days": "ACME_RA_UPSTREAM_CERT_LIFETIME_DAYS",
    "authz_strategy": "ACME_RA_UPSTREAM_AUTHZ_STRATEGY",
    "dns_propagation_timeout_seconds": "ACME_RA_UPSTREAM_DNS_PROPAGATION_TIMEOUT_SECONDS",
}
RFC2136_VARIABLES = {
    "server": "ACME_RA_UPSTREAM_DNS_RFC2136_SERVER",
    "tsig_key_name": "ACME_RA_UPSTREAM_DNS_TSIG_KEY_NAME",
    "tsig_algorithm": "ACME_RA_UPSTREAM_DNS_TSIG_ALGORITHM",
    "tsig_secret_file": "ACME_RA_UPSTREAM_DNS_TSIG_SECRET_FILE",
}
NAMESERVERS_COMMENT = ("lego asked dns_servers only to find each zone's servers; acme-ra also checks propagation "
                       "on them: drop this line if they are caching resolvers")


@dataclass
class Migration:
    frontend: list[tuple[str, str]] = field(default_factory=list)  # (variable, value) before the upstream
    upstream: dict[str, Any] = field(default_factory=dict)  # the upstream, as ACME_RA_CONFIG_FILE spells it
    env: list[tuple[str, str]] = field(default_factory=list)  # (variable, value) after the upstream
    comments: dict[str, str] = field(default_factory=dict)  # variable -> a comment printed above it
    provisioners: list[str] = field(default_factory=list)  # the ACME provisioners' names
    notes: list[str] = field(default_factory=list)  # one line each, for stderr
    secret_files: dict[Path, str] = field(default_factory=dict)  # written only with --secrets-dir
    secrets_dir_given: bool = False  # --secrets-dir given: no "write it to" notes

    def set(self, name: str, value: str, comment: str = "") -> None:
        self.env.append((name, value))
        if comment:
            self.comments[name] = comment

    def environment(self) -> list[tuple[str, str]]:
        """Every variable in print order, the upstream as the "default" one."""
        return self.frontend + [("ACME_RA_UPSTREAM", "acme")] + upstream_environment(self.upstream) + self.env

    def note(self, text: str) -> None:
        self.notes.append(text)


def load(path: Path) -> dict[str, Any]:
    """The parsed ca.json, or :class:`MigrationError` with one line."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise MigrationError(f"cannot read {path}: {getattr(error, 'strerror', None) or error}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise MigrationError(f"{path} is not JSON: {error.msg} at line {error.lineno} column {error.colno}") from None
    if not isinstance(document, dict):
        raise MigrationError(f"{path} is not a step-ca ca.json: expected a JSON object")
    authority = document.get("authority")
    if authority is not None and not isinstance(authority, dict):
        raise MigrationError(f"{path}: authority must be an object")
    kind = (authority or {}).get("type")
    if kind not in (None, "externalcas"):
        raise MigrationError(f"{path} is not an acme-proxy ca.json: authority.type is {kind!r}, not 'externalcas' "
                             "(acme-ra replaces step-ca in RA mode only)")
    return document


def _object(value: Any, where: str, migration: Migration) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        migration.note(f"{where}: expected an object, ignored")
        return {}
    return value


def _text(value: Any, where: str, migration: Migration) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        migration.note(f"{where}: expected a string, ignored")
        return ""
    return value.strip()


def upstream_environment(upstream: dict[str, Any]) -> list[tuple[str, str]]:
    """An upstream's config-file keys as the environment variables of the "default" upstream."""
    pairs = []
    for key, value in upstream.items():
        if key in UPSTREAM_VARIABLES:
            pairs.append((UPSTREAM_VARIABLES[key], str(value)))
        elif key == "dns_update" and "rfc2136" in value:
            pairs += [(RFC2136_VARIABLES[k], str(v)) for k, v in value["rfc2136"].items()]
        elif key == "dns_update":
            pairs.append(("ACME_RA_UPSTREAM_DNS_HOOK", str(value["hook"])))
        elif key == "dns_nameservers":
            pairs.append(("ACME_RA_UPSTREAM_DNS_NAMESERVERS", ",".join(value)))
    return pairs


def migrate(document: dict[str, Any], secrets_dir: Path | None = None, secret_prefix: str = "upstream") -> Migration:
    """The acme-ra settings for one acme-proxy ca.json; secrets go to ``secrets_dir`` (or
    :data:`DEFAULT_SECRETS_DIR`, for the operator to write), named ``secret_prefix-...``."""
    migration = Migration(secrets_dir_given=secrets_dir is not None)
    secrets = secrets_dir.resolve() if secrets_dir is not None else DEFAULT_SECRETS_DIR
    secrets_prefix = secrets / secret_prefix
    authority = _object(document.get("authority"), "authority", migration)
    config = _object(authority.get("config"), "authority.config", migration)

    for name in document:
        if name in WITHOUT_EQUIVALENT:
            migration.note(f"{name}: ignored: {WITHOUT_EQUIVALENT[name]}")
        elif name not in COVERED_TOP:
            migration.note(f"{name}: unknown ca.json member, ignored")
    for name in authority:
        if name not in COVERED_AUTHORITY:
            migration.note(f"authority.{name}: unknown or unsupported member, ignored")
    for name in config:
        if name not in COVERED_CONFIG:
            migration.note(f"authority.config.{name}: unknown acme-proxy setting, ignored")

    _frontend(document, migration)
    _upstream(config, secrets_prefix, migration)
    _dns01(_object(config.get("dns01_txt"), "authority.config.dns01_txt", migration), secrets_prefix, migration)
    _metrics(config, migration)
    _provisioners(authority.get("provisioners"), migration)
    _policy(_object(authority.get("policy"), "authority.policy", migration), migration)
    return migration


def _frontend(document: dict[str, Any], migration: Migration) -> None:
    address = _text(document.get("address"), "address", migration)
    port = 443
    if address:
        host, _, port_text = address.rpartition(":")
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            migration.note(f"address {address!r}: not host:port, ignored (set ACME_RA_LISTEN)")
        else:
            port = int(port_text)
            migration.frontend.append(("ACME_RA_LISTEN", f"{host or '0.0.0.0'}:{port}"))
    names = document.get("dnsNames")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        migration.note("dnsNames: missing or not a list of names: set ACME_RA_EXTERNAL_URL to the URL clients use")
        return
    host = f"[{names[0]}]" if ":" in names[0] else names[0]
    migration.frontend.append(("ACME_RA_EXTERNAL_URL", f"https://{host}" + ("" if port == 443 else f":{port}")))
    if len(names) > 1:
        migration.note(f"dnsNames: acme-ra serves one external URL (https://{host}); clients using "
                       f"{', '.join(names[1:])} need a certificate naming them (ACME_RA_TLS_CERT_FILE)")


def _upstream(config: dict[str, Any], secrets: Path, migration: Migration) -> None:
    """``secrets``: the secret files' path prefix (``/etc/acme-ra/upstream``)."""
    upstream = migration.upstream
    ca_url = _text(config.get("ca_url"), "authority.config.ca_url", migration)
    if not ca_url:
        migration.note("authority.config.ca_url is empty: set ACME_RA_UPSTREAM_DIRECTORY_URL "
                       "to the upstream's ACME directory (docs/upstream.md)")
    upstream["directory_url"] = ca_url
    email = _text(config.get("account_email"), "authority.config.account_email", migration)
    if email:
        upstream["email"] = email
    kid = _text(config.get("eab_kid"), "authority.config.eab_kid", migration)
    hmac_key = _text(config.get("eab_hmac_key"), "authority.config.eab_hmac_key", migration)
    if kid and hmac_key:
        upstream["eab_kid"] = kid
        upstream["eab_hmac_key_file"] = _secret_file(Path(f"{secrets}-{EAB_HMAC_KEY_FILE_NAME}"), hmac_key,
                                                     "authority.config.eab_hmac_key", migration)
    elif kid or hmac_key:
        given, missing = ("eab_kid", "eab_hmac_key") if kid else ("eab_hmac_key", "eab_kid")
        migration.note(f"authority.config.{given} without {missing}: no EAB configured; "
                       "set ACME_RA_UPSTREAM_EAB_KID and ACME_RA_UPSTREAM_EAB_HMAC_KEY_FILE")
    lifetime = config.get("certlifetime")
    if lifetime not in (None, "", 0):
        days = _days(lifetime)
        if days is None:
            migration.note(f"authority.config.certlifetime {lifetime!r}: not a number of days or hours, ignored")
        else:
            upstream["cert_lifetime_days"] = days


def _days(value: Any) -> int | None:
    """certlifetime as whole days: a number of days, or a Go duration in hours ("2160h")."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = re.fullmatch(r"(\d+)h(?:0m(?:0s)?)?", str(value).strip())
    if match and int(match.group(1)) >= 24:
        return int(match.group(1)) // 24
    return None


def _secret_file(path: Path, value: str, member: str, migration: Migration) -> str:
    migration.secret_files[path] = value
    if not migration.secrets_dir_given:
        migration.note(f"{member}: write it to {path} (mode 0600), or rerun with --secrets-dir DIR")
    return str(path)


def _dns01(dns01: dict[str, Any], secrets: Path, migration: Migration) -> None:
    provider = _text(dns01.get("provider"), "authority.config.dns01_txt.provider", migration).lower()
    env_vars = _object(dns01.get("env_vars"), "authority.config.dns01_txt.env_vars", migration)
    servers = dns01.get("dns_servers") or []
    upstream = migration.upstream
    if not provider:
        upstream["authz_strategy"] = "prevalidated"
        if env_vars or servers:
            migration.note("authority.config.dns01_txt: no provider, so its dns_servers and env_vars are ignored")
        return
    upstream["authz_strategy"] = "dns-01"
    values = {str(k): str(v) for k, v in env_vars.items()}
    if provider == "rfc2136":
        _rfc2136(values, secrets, migration)
    elif provider == "exec":
        hook = values.pop("EXEC_PATH", "") or HOOK_PATH
        upstream["dns_update"] = {"hook": hook}
        migration.note(f"dns01_txt provider exec: {hook} is now called `add|remove FQDN VALUE` "
                       "(lego called it `present|cleanup FQDN VALUE`): adapt its first argument")
        values.pop("EXEC_MODE", None)
        _unused_env_vars(provider, values, migration)
    else:
        upstream["dns_update"] = {"hook": HOOK_PATH}
        names = ", ".join(sorted(values)) or "none"
        migration.note(f"dns01_txt provider {provider}: acme-ra has no {provider} publisher: write the hook "
                       f"{HOOK_PATH}, called `add|remove FQDN VALUE`, that updates {provider} "
                       f"(e.g. lego's exec provider or an acme.sh dnsapi script; it needs env_vars: {names})")
    if not isinstance(servers, list) or not all(isinstance(s, str) for s in servers):
        migration.note("authority.config.dns01_txt.dns_servers: expected a list of host[:port], ignored")
    elif servers:
        upstream["dns_nameservers"] = [_with_port(s.strip()) for s in servers]
        migration.comments["ACME_RA_UPSTREAM_DNS_NAMESERVERS"] = NAMESERVERS_COMMENT


def _with_port(server: str) -> str:
    if server.startswith("[") and "]:" in server:
        return server
    if server.count(":") == 1:
        return server
    return f"[{server}]:53" if ":" in server else f"{server}:53"


def _rfc2136(values: dict[str, str], secrets: Path, migration: Migration) -> None:
    """lego's rfc2136 env_vars -> the RFC 2136 settings."""
    rfc2136: dict[str, str] = {}
    nameserver = values.pop("RFC2136_NAMESERVER", "").strip()
    if nameserver:
        rfc2136["server"] = _with_port(nameserver)
    else:
        migration.note("dns01_txt provider rfc2136 without RFC2136_NAMESERVER: set ACME_RA_UPSTREAM_DNS_RFC2136_SERVER")
    key_name = values.pop("RFC2136_TSIG_KEY", "").strip()
    algorithm = values.pop("RFC2136_TSIG_ALGORITHM", "").strip().rstrip(".").lower()
    secret = values.pop("RFC2136_TSIG_SECRET", "").strip()
    secret_file = values.pop("RFC2136_TSIG_SECRET_FILE", "").strip()
    if key_name:
        rfc2136["tsig_key_name"] = key_name
        rfc2136["tsig_algorithm"] = algorithm or LEGO_DEFAULT_TSIG_ALGORITHM
        if secret_file:
            rfc2136["tsig_secret_file"] = secret_file
        elif secret:
            rfc2136["tsig_secret_file"] = _secret_file(Path(f"{secrets}-{TSIG_SECRET_FILE_NAME}"), secret,
                                                       "dns01_txt.env_vars.RFC2136_TSIG_SECRET", migration)
        else:
            migration.note("dns01_txt provider rfc2136: RFC2136_TSIG_KEY without RFC2136_TSIG_SECRET: "
                           "set ACME_RA_UPSTREAM_DNS_TSIG_SECRET_FILE")
    elif secret or secret_file:
        migration.note("dns01_txt provider rfc2136: RFC2136_TSIG_SECRET without RFC2136_TSIG_KEY: "
                       "set ACME_RA_UPSTREAM_DNS_TSIG_KEY_NAME")
    migration.upstream["dns_update"] = {"rfc2136": rfc2136}
    timeout = values.pop("RFC2136_PROPAGATION_TIMEOUT", "").strip()
    if timeout.isdigit() and int(timeout) > 0:
        migration.upstream["dns_propagation_timeout_seconds"] = int(timeout)
    elif timeout:
        migration.note(f"dns01_txt RFC2136_PROPAGATION_TIMEOUT {timeout!r}: not a number of seconds, ignored")
    for tuning in ("RFC2136_POLLING_INTERVAL", "RFC2136_TTL", "RFC2136_SEQUENCE_INTERVAL",
                   "RFC2136_DNS_TIMEOUT", "RFC2136_TIMEOUT"):
        values.pop(tuning, None)  # lego's own pacing: the signer has its own
    _unused_env_vars("rfc2136", values, migration)


def _unused_env_vars(provider: str, values: dict[str, str], migration: Migration) -> None:
    for name in sorted(values):
        migration.note(f"dns01_txt.env_vars.{name}: not used by acme-ra's {provider} publisher, ignored")


def _metrics(config: dict[str, Any], migration: Migration) -> None:
    metrics = _object(config.get("metrics"), "authority.config.metrics", migration)
    for name in metrics:
        if name not in ("port", "enabled", "dataSource"):
            migration.note(f"authority.config.metrics.{name}: unknown member, ignored")
    if metrics.get("enabled") is False:
        migration.set("ACME_RA_METRICS_LISTEN", "")
        return
    port = metrics.get("port")
    if port is None:
        return
    if isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536:
        migration.set("ACME_RA_METRICS_LISTEN", f"0.0.0.0:{port}")
    else:
        migration.note(f"authority.config.metrics.port {port!r}: not a port, ignored")


def _provisioners(provisioners: Any, migration: Migration) -> None:
    if provisioners is None:
        return
    if not isinstance(provisioners, list):
        migration.note("authority.provisioners: expected a list, ignored")
        return
    names: list[str] = []
    challenge_sets: set[tuple[str, ...]] = set()
    eab: set[bool] = set()
    for index, provisioner in enumerate(provisioners):
        if not isinstance(provisioner, dict):
            migration.note(f"authority.provisioners[{index}]: expected an object, ignored")
            continue
        name = str(provisioner.get("name", ""))
        kind = str(provisioner.get("type", ""))
        if kind.upper() != "ACME":
            migration.note(f"provisioner {name or index} (type {kind or 'none'}): acme-ra serves ACME only, dropped")
            continue
        if not name or not name.replace("-", "").replace("_", "").isalnum():
            migration.note(f"provisioner {name!r}: acme-ra names are letters, digits, '-' and '_': rename it, dropped")
            continue
        names.append(name)
        for member in provisioner:
            if member not in COVERED_PROVISIONER:
                migration.note(f"provisioner {name}: {member}: unsupported, ignored")
        _claims(name, _object(provisioner.get("claims"), f"provisioner {name}: claims", migration), migration)
        options = _object(provisioner.get("options"), f"provisioner {name}: options", migration)
        if any(options.get(kind_) for kind_ in options):
            migration.note(f"provisioner {name}: options (certificate templates): the upstream's profile "
                           "decides the certificate's contents, ignored")
        challenges = provisioner.get("challenges")
        if isinstance(challenges, list) and challenges:
            kept = tuple(c for c in challenges if c in CHALLENGE_TYPES)
            for dropped in sorted({str(c) for c in challenges} - set(kept)):
                migration.note(f"provisioner {name}: challenge {dropped}: not offered by acme-ra, dropped")
            challenge_sets.add(kept)
        eab.add(provisioner.get("requireEAB") is True)
    if not names:
        migration.note("authority.provisioners: no ACME provisioner: acme-ra serves its default, acme")
        return
    migration.provisioners = names
    migration.set("ACME_RA_PROVISIONERS", ",".join(names))
    if len(challenge_sets) > 1:
        migration.note("provisioners: their challenges differ; acme-ra offers one list to all: "
                       "the union is used")
    union = [c for c in CHALLENGE_TYPES if any(c in s for s in challenge_sets)]
    if union:
        migration.set("ACME_RA_CHALLENGE_TYPES", ",".join(union))
    if True in eab:
        migration.set("ACME_RA_EAB_REQUIRED", "true")
        migration.note("requireEAB: step-ca's EAB keys do not carry over: make new ones with `acme-ra eab create`"
                       + (" (EAB is now required on every provisioner)" if False in eab else ""))


# step-ca claims acme-ra has nothing for: a note only when set away from step-ca's default.
CLAIM_DEFAULTS: dict[str, Any] = {"enableSSHCA": False, "disableRenewal": False, "allowRenewalAfterExpiry": False,
                                  "disableSmallstepExtensions": None}


def _claims(name: str, claims: dict[str, Any], migration: Migration) -> None:
    for claim, value in claims.items():
        if claim in CLAIM_DEFAULTS and (CLAIM_DEFAULTS[claim] is None or value == CLAIM_DEFAULTS[claim]):
            continue
        if claim.endswith("TLSCertDuration"):
            migration.note(f"provisioner {name}: claims.{claim}: the upstream's profile decides the lifetime, ignored")
        else:
            migration.note(f"provisioner {name}: claims.{claim}={json.dumps(value)}: unsupported, ignored")


def _policy(policy: dict[str, Any], migration: Migration) -> None:
    x509 = _object(policy.get("x509"), "authority.policy.x509", migration)
    for side, setting in (("allow", "ACME_RA_POLICY_ALLOW"), ("deny", "ACME_RA_POLICY_DENY")):
        rules = _object(x509.get(side), f"authority.policy.x509.{side}", migration)
        dns = rules.get("dns") or []
        # acme-ra reads step-ca's "*.example.org" as step-ca does (the subdomains, not the domain).
        converted = [r for r in dns if isinstance(r, str)]
        ips = [r for r in rules.get("ip") or [] if isinstance(r, str)]
        if converted or ips:
            migration.set(setting, ",".join(converted + ips))
        for other in sorted(set(rules) - {"dns", "ip"}):
            migration.note(f"authority.policy.x509.{side}.{other}: unsupported, ignored")
    for other in sorted(set(policy) - {"x509"}):
        migration.note(f"authority.policy.{other}: unsupported, ignored")
