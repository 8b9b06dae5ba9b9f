"""acme-ra frontend: the ACME HTTP API (RFC 8555)."""
