"""One check of one challenge from one perspective, with the addresses it resolved.

The primary's own check and a remote perspective's run the very code of the job handler
(``ChallengeValidator.validate``: the challenge type's check, then CAA, problems as data); only
the resolver differs, wrapped per check so that the addresses it gave are kept for the
challenge's validation record.
"""

from __future__ import annotations

from typing import Any

import httpx

from acme_ra_validator.resolver import NameResolver
from acme_ra_validator.worker import ChallengeToCheck, ChallengeValidator, ValidationOptions


class RecordingResolver(NameResolver):
    """``resolver`` for one check, keeping every address it returned (in order, once each)."""

    def __init__(self, resolver: NameResolver) -> None:  # shares the resolver's state (no super call)
        self.__dict__.update(resolver.__dict__)
        self.used: list[str] = []

    async def addresses(self, name: str) -> list[str]:
        found = await super().addresses(name)
        self.used.extend(address for address in found if address not in self.used)
        return found


class SingleCheck(ChallengeValidator):
    """The job handler's check without its database: what a perspective runs."""

    def __init__(self, http: httpx.AsyncClient, resolver: NameResolver, options: ValidationOptions) -> None:
        self.http = http
        self.resolver = resolver
        self.options = options
        self.nc = None
        self.persist_until: dict[str, int] = {}  # a dns-persist-01 record's persistUntil: unused here


async def check_once(
    http: httpx.AsyncClient, resolver: NameResolver, options: ValidationOptions, challenge: ChallengeToCheck
) -> tuple[dict[str, Any] | None, list[str]]:
    """Check ``challenge``: (None when valid else the problem as data, the addresses resolved).
    Never raises (``ChallengeValidator.validate``)."""
    recording = RecordingResolver(resolver)
    problem = await SingleCheck(http, recording, options).validate(challenge)
    return problem, recording.used
