"""The RA's one persistent account at an upstream CA (``upstream_accounts``).

The key is created (and sealed in the database) *before* the account is registered, so every
signer replica uses the same key; registering an already-registered key returns the existing
account (RFC 8555 §7.3.1), which makes concurrent first registrations harmless. Registration
uses External Account Binding when configured. When the upstream forgets the account
(``accountDoesNotExist``, e.g. Pebble after a restart) the same key is registered again; if
the upstream refuses that key, a new key is made and registered.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from acme import messages
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from acme_ra.db.engine import Database
from acme_ra.db.models import UpstreamAccount, new_id, utcnow
from acme_ra.sealing import Sealer, SealError, upstream_account_purpose
from acme_ra_signer import metrics
from acme_ra_signer.upstream.acme_client import AccountKey, AcmeClient, AcmeProblem
from acme_ra_signer.upstream.acme_config import Upstream
from acme_ra_signer.upstream.base import UpstreamUnavailable

log = logging.getLogger("acme_ra_signer.upstream.accounts")

# Problem types that mean "try again later" when registering, not "this EAB/key is refused".
TRANSIENT_REGISTRATION_PROBLEMS = {"serverInternal", "rateLimited", "badNonce"}


class AccountRefused(UpstreamUnavailable):
    """The upstream refused to register the account (wrong EAB pair, EAB missing, policy).
    Retrying will not help until the operator fixes the setting the message names."""


@dataclass(frozen=True)
class Account:
    row_id: str
    key: AccountKey
    url: str


class AccountStore:
    """Loads, registers and re-registers the account of one upstream."""

    def __init__(self, db: Database, sealer: Sealer, upstream: Upstream, client: AcmeClient) -> None:
        self.db = db
        self.sealer = sealer
        self.upstream = upstream
        self.client = client
        self._lock = asyncio.Lock()
        self._current: Account | None = None

    @property
    def known(self) -> Account | None:
        """The account as last loaded or registered, without asking anyone."""
        return self._current

    async def current(self) -> Account:
        """The registered account (registering it first if needed)."""
        if self._current is not None:
            return self._current
        async with self._lock:
            if self._current is None:
                row_id, key, url = await self._load_or_create()
                if url is None:
                    url = await self._register_and_record(row_id, key, stale_url=None)
                self._current = Account(row_id, key, url)
            return self._current

    async def replace(self, stale: Account) -> Account:
        """The upstream no longer knows ``stale``: register again (once for all concurrent callers)."""
        async with self._lock:
            if self._current is not None and self._current.url != stale.url:
                return self._current  # another task already did it
            row_id, key, url = await self._load_or_create()
            if url is not None and url != stale.url:
                self._current = Account(row_id, key, url)  # another replica already did it
                return self._current
            log.warning(
                "upstream %s no longer knows account %s; registering again",
                self.upstream.name,
                stale.url,
                extra={"upstream": self.upstream.name},
            )
            try:
                url = await self._register_and_record(row_id, key, stale_url=stale.url)
            except AccountRefused:
                # The upstream refuses this key (e.g. deactivated): a new key, a new account.
                key = AccountKey.generate(self.upstream.account_key_type)
                url = await self._register_and_record(row_id, key, stale_url=stale.url, new_key=True)
            self._current = Account(row_id, key, url)
            return self._current

    async def is_valid(self, account: Account) -> bool:
        """Whether the upstream still knows ``account`` as valid (POST-as-GET of its URL)."""
        try:
            response = await self.client.post(account.url, None, account.key, account.url)
        except AcmeProblem as problem:
            if problem.code in ("accountDoesNotExist", "unauthorized") or problem.status == 404:
                return False
            raise UpstreamUnavailable(f"upstream {self.upstream.name}: {problem}") from None
        try:
            return bool(response.json().get("status") == "valid")
        except ValueError:
            return True

    async def _load_or_create(self) -> tuple[str, AccountKey, str | None]:
        row = await self._load()
        if row is None:
            key = AccountKey.generate(self.upstream.account_key_type)
            row_id = new_id()
            now = utcnow()
            try:
                async with self.db.transaction() as session:
                    session.add(
                        UpstreamAccount(
                            id=row_id,
                            upstream=self.upstream.name,
                            directory_url=self.upstream.directory_url,
                            key_sealed=self.sealer.seal(key.to_pem(), upstream_account_purpose(row_id)),
                            eab_kid=self.upstream.eab_kid or None,
                            registrations=0,
                            created_at=now,
                            updated_at=now,
                        )
                    )
            except IntegrityError:
                pass  # another replica created it first: use its key
            row = await self._load()
            assert row is not None
        try:
            key = AccountKey.from_pem(self.sealer.open(row.key_sealed, upstream_account_purpose(row.id)))
        except SealError as error:
            raise AccountRefused(
                f"upstream {self.upstream.name}: cannot open the stored account key: {error}"
            ) from None
        return row.id, key, row.url

    async def _load(self) -> UpstreamAccount | None:
        async with self.db.sessions() as session:
            return (
                await session.execute(
                    select(UpstreamAccount).where(
                        UpstreamAccount.upstream == self.upstream.name,
                        UpstreamAccount.directory_url == self.upstream.directory_url,
                    )
                )
            ).scalar_one_or_none()

    async def _register_and_record(
        self, row_id: str, key: AccountKey, stale_url: str | None, new_key: bool = False
    ) -> str:
        url = await self._register(key)
        values: dict[str, object] = {"url": url, "registered_at": utcnow(), "updated_at": utcnow()}
        if new_key:
            values["key_sealed"] = self.sealer.seal(key.to_pem(), upstream_account_purpose(row_id))
        async with self.db.transaction() as session:
            await session.execute(
                update(UpstreamAccount)
                .where(UpstreamAccount.id == row_id)
                .values(registrations=UpstreamAccount.registrations + 1, **values)
            )
        metrics.UPSTREAM_ACCOUNT_REGISTRATIONS.labels(self.upstream.name).inc()
        log.info(
            "upstream account registered",
            extra={"upstream": self.upstream.name, "account": url, "replaces": stale_url, "eab": self.upstream.has_eab},
        )
        return url

    async def _register(self, key: AccountKey) -> str:
        upstream = self.upstream
        directory = await self.client.directory()
        eab_settings = f"{upstream.setting('eab_kid')} and {upstream.setting('eab_hmac_key')}"
        binding = None
        if upstream.has_eab:
            assert upstream.eab_hmac_key is not None
            binding = messages.ExternalAccountBinding.from_data(
                account_public_key=key.public_jwk,
                kid=upstream.eab_kid,
                hmac_key=upstream.eab_hmac_key.get_secret_value().strip(),
                directory=directory,
            )
        elif getattr(getattr(directory, "meta", None), "external_account_required", False):
            raise AccountRefused(f"upstream {upstream.name} requires External Account Binding: set {eab_settings}")
        registration = messages.NewRegistration.from_data(
            email=upstream.email or None,
            terms_of_service_agreed=True,
            external_account_binding=binding,
        )
        try:
            response = await self.client.post(directory["newAccount"], registration, key, kid=None)
        except AcmeProblem as problem:
            if problem.status >= 500 or problem.code in TRANSIENT_REGISTRATION_PROBLEMS:
                raise UpstreamUnavailable(f"upstream {upstream.name}: account registration: {problem}") from None
            hint = f"; check {eab_settings}" if upstream.has_eab else ""
            raise AccountRefused(
                f"upstream {upstream.name} refused the account registration ({problem.code}: {problem.detail}){hint}"
            ) from None
        url: str = response.headers.get("Location", "")
        if not url:
            raise UpstreamUnavailable(f"upstream {upstream.name}: newAccount answered without a Location")
        return url
