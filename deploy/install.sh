#!/usr/bin/env bash
# Install acme-ra on a systemd machine from its wheel:
#   deploy/install.sh [--root DIR] [--user NAME] [--python PYTHON] acme_ra-VERSION-py3-none-any.whl
# Creates the system user (default acme-ra) and its directories, installs the wheel into a venv
# in /opt/acme-ra, writes the units (deploy/systemd/) and /etc/acme-ra/env with the secret files,
# owned so that the services (running as that user) can read them and nobody else can, then says
# what to do next. Run again to upgrade: the venv is replaced, env and secrets are kept.
# --root DIR installs into DIR instead of / (a package build, or the tests); the user must then
# exist already, and nothing is started.
set -euo pipefail

root=/
user=acme-ra
python=
here=$(cd "$(dirname "$0")" && pwd)

usage() { echo "usage: $0 [--root DIR] [--user NAME] [--python PYTHON] WHEEL" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --root) root=${2:?}; shift 2 ;;
    --user) user=${2:?}; shift 2 ;;
    --python) python=${2:?}; shift 2 ;;
    -h|--help) usage ;;
    -*) echo "install.sh: unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
[[ $# -eq 1 ]] || usage
wheel=$(realpath "$1")
[[ -f $wheel && $wheel == *.whl ]] || { echo "install.sh: $1 is not a wheel (make dist builds one)" >&2; exit 2; }
[[ $(id -u) -eq 0 ]] || { echo "install.sh: run it as root (it creates a user and writes /etc, /opt)" >&2; exit 1; }
if [[ -z $python ]]; then
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      python=$(command -v "$candidate"); break
    fi
  done
  [[ -n $python ]] || { echo "install.sh: no Python 3.11+ with venv: apt-get install -y python3-venv" >&2; exit 1; }
fi
root=${root%/}
venv=$root/opt/acme-ra
etc=$root/etc/acme-ra
units=$root/etc/systemd/system

# 1. The user: a system account without a shell or a home of its own.
if ! id "$user" >/dev/null 2>&1; then
  if [[ -n $root ]]; then
    echo "install.sh: user $user does not exist (with --root it must: create it first)" >&2; exit 1
  fi
  useradd --system --user-group --home-dir /var/lib/acme-ra --no-create-home --shell /usr/sbin/nologin "$user"
  echo "created system user $user"
fi
group=$(id -gn "$user")

# 2. The venv with the wheel (made anew on upgrade: stop the units first).
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$wheel"
install -d -m 0755 "$root/usr/local/bin"
ln -sfn /opt/acme-ra/bin/acme-ra "$root/usr/local/bin/acme-ra"

# 3. Configuration and secrets: root writes them, the service group reads them, nobody else.
install -d -m 0750 -o root -g "$group" "$etc"
if [[ ! -e $etc/env ]]; then
  install -m 0640 -o root -g "$group" "$here/systemd/acme-ra.env" "$etc/env"
  wrote_env=yes
fi
if [[ ! -e $etc/secret.key ]]; then  # seals secrets at rest (ACME_RA_SECRET_KEY_FILE)
  (umask 077; "$python" -c 'import secrets; print(secrets.token_urlsafe(48))' > "$etc/secret.key")
  chown "root:$group" "$etc/secret.key"; chmod 0640 "$etc/secret.key"
fi
if [[ ! -e $etc/upstream-hmac.key ]]; then  # the upstream CA's EAB HMAC key: the operator's to fill
  install -m 0640 -o root -g "$group" /dev/null "$etc/upstream-hmac.key"
fi

# 4. State: systemd creates /var/lib/acme-ra (StateDirectory=); made here too for acme-ra
#    commands run before the first start.
install -d -m 0750 -o "$user" -g "$group" "$root/var/lib/acme-ra" "$root/var/lib/acme-ra-nats"

# 5. The units, for this user.
install -d -m 0755 "$units"
for unit in "$here"/systemd/*.service; do
  sed -e "s/^User=acme-ra$/User=$user/" -e "s/^Group=acme-ra$/Group=$group/" "$unit" > "$units/$(basename "$unit")"
  chmod 0644 "$units/$(basename "$unit")"
done

version=$("$venv/bin/acme-ra" --version)
cat <<END
installed $version into ${root:-}/opt/acme-ra, units in $units, configuration in $etc.
Next:
  1. Edit $etc/env${wrote_env:+ (a template)}: the database, the upstream CA, the host name.
     Put the upstream CA's EAB HMAC key in $etc/upstream-hmac.key (empty now).
  2. As $user, with that environment (docs/install.md, step 3): check it, the schema, the
     upstream account, the frontend's certificate:
       as_acme_ra() { runuser -u $user -- env -C /var/lib/acme-ra sh -c 'set -a; . /etc/acme-ra/env; set +a; exec "\$@"' sh "\$@"; }
       as_acme_ra /opt/acme-ra/bin/acme-ra config check
       as_acme_ra /opt/acme-ra/bin/acme-ra db migrate
       as_acme_ra /opt/acme-ra/bin/python -m acme_ra_signer check-upstream
       as_acme_ra /opt/acme-ra/bin/python -m acme_ra_signer bootstrap
  3. systemctl daemon-reload
     systemctl enable --now acme-ra-nats acme-ra-signer acme-ra-validator acme-ra-frontend acme-ra-admin
END
