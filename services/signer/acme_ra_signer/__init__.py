"""acme-ra signer: turns finalized orders into certificates through an upstream CA driver."""
