"""`make bench`: the load generator and the runner that measures acme-ra against Pebble.

- ``acme_client``      a small async ACME client (ES256 JWS, EAB, nonces, one timing per request)
- ``challenge_server`` the generator's one http-01 server (tokens in a dict)
- ``load``             the load generator: accounts, warm-up, fixed certificate counts per
                       concurrency level, latencies per issuance and per endpoint, errors
- ``targets``          what is measured: acme-ra (lab CA or Pebble upstream) and Pebble alone
- ``nonces``           newNonce requests per second (wrk when installed, else our own client)
- ``profiling``        py-spy around the load, and a summary of the hottest frames
- ``report``           the tables ``python -m bench`` prints

See docs/performance.md for the figures and how to read them.
"""
