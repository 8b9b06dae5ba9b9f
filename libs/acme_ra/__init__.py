"""acme-ra: an ACME (RFC 8555) Registration Authority. Shared building blocks for all services."""

__version__ = "0.1.0"
