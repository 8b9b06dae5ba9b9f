"""acme-ra's tooling: what composes the services rather than runs inside one.

- :mod:`acme_ra_tools.cli`: the ``acme-ra`` command (``dev``, ``migrate``, ``config``, and the
  admin service's operator commands);
- :mod:`acme_ra_tools.supervisor`: the one process supervisor (children, readiness, start-up
  steps, Ctrl-C) behind ``make dev`` and ``make lab``;
- :mod:`acme_ra_tools.dev`: ``make dev``'s topology; :mod:`acme_ra_tools.lab`: ``make lab``'s,
  built on :mod:`acme_ra_tools.service_group` (restart on death) and the ``lab_*`` modules
  (``lab_infrastructure``, ``lab_tls``, ``lab_perspectives``, ``lab_init``: docker-compose's init job).

It may import the services; the runtime library (``acme_ra``) and the services never import it
(tests/test_architecture.py).
"""
