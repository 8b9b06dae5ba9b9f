"""The sections of ``acme_ra.config.Settings``, one module per area: acme.py (the ACME API),
validation.py (the validators), upstream.py (the signer's upstream); section.py their base."""
