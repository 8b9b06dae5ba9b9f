"""ACME wire-level building blocks: problem documents, JWS checks, identifiers, CSRs."""
