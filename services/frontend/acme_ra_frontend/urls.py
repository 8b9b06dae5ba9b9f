"""Every ACME URL the frontend serves: paths as constants, absolute URLs from the external base."""

from __future__ import annotations

# Path templates (FastAPI syntax), relative to the server root. Seed (step-ca) compatible.
DIRECTORY = "/acme/{provisioner}/directory"
NEW_NONCE = "/acme/{provisioner}/new-nonce"
NEW_ACCOUNT = "/acme/{provisioner}/new-account"
NEW_ORDER = "/acme/{provisioner}/new-order"
REVOKE_CERT = "/acme/{provisioner}/revoke-cert"
KEY_CHANGE = "/acme/{provisioner}/key-change"
ACCOUNT = "/acme/{provisioner}/account/{account_id}"
ACCOUNT_ORDERS = "/acme/{provisioner}/account/{account_id}/orders"
ORDER = "/acme/{provisioner}/order/{order_id}"
FINALIZE = "/acme/{provisioner}/order/{order_id}/finalize"
AUTHZ = "/acme/{provisioner}/authz/{authz_id}"
CHALLENGE = "/acme/{provisioner}/challenge/{authz_id}/{challenge_id}"
CERTIFICATE = "/acme/{provisioner}/certificate/{certificate_id}"
CERTIFICATE_ALTERNATE = "/acme/{provisioner}/certificate/{certificate_id}/{alternate}"
RENEWAL_INFO_BASE = "/acme/{provisioner}/renewal-info"
RENEWAL_INFO = "/acme/{provisioner}/renewal-info/{cert_id}"


class Urls:
    """Absolute URLs for one provisioner, as clients see them (ACME_RA_EXTERNAL_URL)."""

    __slots__ = ("base", "prefix", "provisioner")

    def __init__(self, base: str, provisioner: str) -> None:
        self.base = base
        self.provisioner = provisioner
        self.prefix = f"{base}/acme/{provisioner}"

    @property
    def directory(self) -> str:
        return f"{self.prefix}/directory"

    def account(self, account_id: str) -> str:
        return f"{self.prefix}/account/{account_id}"

    def account_orders(self, account_id: str) -> str:
        return f"{self.prefix}/account/{account_id}/orders"

    def order(self, order_id: str) -> str:
        return f"{self.prefix}/order/{order_id}"

    def finalize(self, order_id: str) -> str:
        return f"{self.prefix}/order/{order_id}/finalize"

    def authz(self, authz_id: str) -> str:
        return f"{self.prefix}/authz/{authz_id}"

    def challenge(self, authz_id: str, challenge_id: str) -> str:
        return f"{self.prefix}/challenge/{authz_id}/{challenge_id}"

    def certificate(self, certificate_id: str) -> str:
        return f"{self.prefix}/certificate/{certificate_id}"

    def account_id_from_kid(self, kid: str) -> str | None:
        head = f"{self.prefix}/account/"
        if not kid.startswith(head):
            return None
        account_id = kid[len(head):]
        return account_id if account_id and "/" not in account_id else None
