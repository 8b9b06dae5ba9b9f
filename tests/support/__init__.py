"""What the integration and end-to-end tests run against: the topology ``make dev`` starts,
a test DNS server, certbot and its hooks, and a fresh database per run."""
