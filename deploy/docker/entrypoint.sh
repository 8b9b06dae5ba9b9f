#!/bin/sh
# The acme-ra image's entrypoint: the first argument picks what runs.
set -eu

command=${1:-frontend}
[ "$#" -gt 0 ] && shift
case "$command" in
  frontend | validator | signer | admin)
    exec python -m "acme_ra_${command}" "$@" ;;
  migrate)  # the database schema (a job, before the services start)
    exec acme-ra db migrate "$@" ;;
  bootstrap | check-upstream)
    exec python -m acme_ra_signer "$command" "$@" ;;
  lab-init)  # labs only: the lab TLS CA, server certificates and sealing secret in DIR
    exec python -m acme_ra_tools.lab init "$@" ;;
  *)
    exec "$command" "$@" ;;
esac
