"""Identifier policy: which names and addresses acme-ra asks the upstream CA to certify.

Rules are strings: ``host.example.org`` (that name only), ``.example.org`` (example.org and every
name under it), ``*.example.org`` (step-ca's form: every name under example.org, not example.org
itself), ``10.0.0.0/8`` or ``2001:db8::/32`` (IP identifiers in that network). A ``*`` anywhere
else is refused with one line. A deny rule
always wins; when there are allow rules, an identifier must match one. Wildcard identifiers are
matched by their base name and can be refused altogether. The global policy comes from
ACME_RA_POLICY_*; an EAB key may carry its own, which applies on top (both must allow).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from acme_ra.protocol.identifiers import Identifier


def parse_rules(text: str | list[str] | None) -> list[str]:
    items = text.split(",") if isinstance(text, str) else (text or [])
    rules = []
    for item in items:
        rule = item.strip().lower()
        if not rule:
            continue
        if "/" in rule:
            ipaddress.ip_network(rule, strict=False)  # ValueError names a bad rule
        elif "*" in rule and not (rule.startswith("*.") and "*" not in rule[2:] and rule[2:].strip(".")):
            raise ValueError(f"policy rule {rule!r}: '*' only as the whole first label "
                             "('*.example.edu': every name under example.edu; '.example.edu': those and example.edu)")
        rules.append(rule)
    return rules


def _matches(rule: str, identifier: Identifier) -> bool:
    if "/" in rule:
        if identifier.type != "ip":
            return False
        return ipaddress.ip_address(identifier.value) in ipaddress.ip_network(rule, strict=False)
    if identifier.type != "dns":
        return rule == identifier.value
    name = identifier.base_value
    if rule.startswith("*."):  # step-ca: any subdomain; a wildcard identifier *.x.y is the rule itself
        return name.endswith(rule[1:]) or (identifier.wildcard and identifier.value == rule)
    if rule.startswith("."):
        return name == rule[1:] or name.endswith(rule)
    return name == rule


@dataclass(frozen=True)
class Policy:
    allow: list[str] = field(default_factory=list)
    deny: list[str] = field(default_factory=list)
    wildcards: bool = True

    @classmethod
    def from_data(cls, data: dict[str, Any] | None) -> Policy:
        data = data or {}
        return cls(parse_rules(data.get("allow")), parse_rules(data.get("deny")), bool(data.get("wildcards", True)))

    def to_data(self) -> dict[str, Any]:
        return {"allow": self.allow, "deny": self.deny, "wildcards": self.wildcards}

    def refusal(self, identifier: Identifier, whose: str = "this account") -> str | None:
        """Why this identifier is refused, or None when it is allowed (``whose`` names who asks)."""
        if identifier.wildcard and not self.wildcards:
            return "wildcard names are not allowed"
        for rule in self.deny:
            if _matches(rule, identifier):
                return f"denied by policy rule {rule!r}"
        if self.allow and not any(_matches(rule, identifier) for rule in self.allow):
            return f"not in the names {whose} may request"
        return None
