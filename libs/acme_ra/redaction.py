"""Passwords out of what acme-ra prints and logs: ``scheme://user:password@host`` shows as
``scheme://user:***@host`` (a NATS token, ``nats://token@host``, as ``nats://***@host``).

Used wherever a configured URL is shown (``acme-ra config check``, start-up lines, errors) and by
the JSON log formatter on every log line, so a library's error that quotes a URL is masked too.
"""

from __future__ import annotations

import re

# Shown instead of a password inside a URL.
MASK = "***"

# scheme://userinfo@ : the userinfo ends at the last "@" before the host (passwords may hold "@",
# percent-encoded or not), and never spans whitespace, quotes or "/" (so not into the next URL).
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^\s/'\"<>]*)@")
# Schemes whose bare userinfo (no ":") is a secret token rather than a user name.
_TOKEN_SCHEMES = ("nats://", "tls://", "ws://", "wss://")


def _masked(match: re.Match[str]) -> str:
    scheme, userinfo = match["scheme"], match["userinfo"]
    user, colon, _password = userinfo.partition(":")
    if colon:
        return f"{scheme}{user}:{MASK}@"
    if scheme.lower() in _TOKEN_SCHEMES and userinfo:
        return f"{scheme}{MASK}@"
    return match[0]


def mask_url(text: str) -> str:
    """``text`` (a URL, a comma list of URLs, or a message quoting some) with every password in a
    URL's userinfo replaced by ``***``."""
    return _USERINFO.sub(_masked, text)
