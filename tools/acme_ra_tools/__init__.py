"""acme-ra's tooling: what composes the services rather than runs inside one.

- :mod:`acme_ra_tools.cli`: the ``acme-ra`` command (``dev``, ``migrate``, ``config``, and the
  admin service's operator commands);
- :mod:`acme_ra_tools.supervisor`: the one process supervisor (children, readiness, start-up
  steps, Ctrl-C) behind ``make dev`` and ``make lab``;
- :mod:`acme_ra_tools.dev`: ``make dev``'s topology; :mod:`acme_ra_tools.lab` and
  :mod:`acme_ra_tools.lab_tls`: ``make lab``'s and docker-compose's lab.

It may import the services; the runtime library (``acme_ra``) and the services never import it
(tests/test_architecture.py).
"""
