"""The validator service: checks ACME challenges (http-01, dns-01, tls-alpn-01) taken from the NATS work queue."""
