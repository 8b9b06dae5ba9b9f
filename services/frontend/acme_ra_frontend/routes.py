"""The route table: the one place a route is described. Each row says its path, its handler,
who signs it, whether its handler needs a transaction, the resource read that rides with the
authentication, whether the account must have agreed to the current terms, and whether it starts
a trace (routing.py says what each field does)."""

from __future__ import annotations

from acme_ra_frontend import accounts, authz, directory, health, orders, renewal_info, revocation, urls
from acme_ra_frontend.context import Atomicity, Auth
from acme_ra_frontend.repo.authz import AUTHZ_READ
from acme_ra_frontend.repo.certificates import CERTIFICATE_READ
from acme_ra_frontend.repo.orders import ORDER_READ
from acme_ra_frontend.routing import AcmeRoute, PageRoute, Route

# Reads only when POST-as-GET; no transaction then.
_READS = Atomicity.NONE_FOR_POST_AS_GET

ROUTES: list[Route] = [
    AcmeRoute(urls.NEW_NONCE, directory.new_nonce_post),
    AcmeRoute(urls.NEW_ACCOUNT, accounts.new_account, Auth.JWK),
    AcmeRoute(urls.ACCOUNT, accounts.account, atomicity=_READS),
    AcmeRoute(urls.ACCOUNT_ORDERS, accounts.account_orders, atomicity=_READS),
    AcmeRoute(urls.NEW_ORDER, orders.new_order, atomicity=Atomicity.NONE, needs_current_terms=True,
              starts_trace=True),
    AcmeRoute(urls.ORDER, orders.order, atomicity=_READS, read=ORDER_READ),
    AcmeRoute(urls.FINALIZE, orders.finalize, atomicity=Atomicity.NONE, read=ORDER_READ, needs_current_terms=True),
    AcmeRoute(urls.AUTHZ, authz.authorization, atomicity=_READS, read=AUTHZ_READ),
    AcmeRoute(urls.CHALLENGE, authz.challenge, atomicity=Atomicity.NONE, read=AUTHZ_READ, needs_current_terms=True),
    AcmeRoute(urls.CERTIFICATE, orders.certificate, atomicity=_READS, read=CERTIFICATE_READ),
    AcmeRoute(urls.CERTIFICATE_ALTERNATE, orders.certificate, atomicity=_READS, read=CERTIFICATE_READ),
    AcmeRoute(urls.KEY_CHANGE, accounts.key_change),
    AcmeRoute(urls.REVOKE_CERT, revocation.revoke_cert, Auth.EITHER),
    PageRoute(urls.DIRECTORY, directory.directory),
    # POST-as-GET of the directory (RFC 8555 §6.3); a plain POST there is a 405. Rare: the router.
    AcmeRoute(urls.DIRECTORY, directory.directory_as_post, direct=False, get_resource=True),
    PageRoute(urls.NEW_NONCE, directory.new_nonce),  # answered by headers.AcmeHeaders before routing
    PageRoute(urls.RENEWAL_INFO, renewal_info.renewal_info),
    PageRoute(urls.RENEWAL_INFO_BASE, renewal_info.renewal_info),
    PageRoute(urls.RENEWAL_INFO + "/", renewal_info.renewal_info),  # a trailing slash is accepted too
    # Where a person agrees to changed terms of service (a plain web page and its form).
    PageRoute(accounts.TERMS_AGREEMENT, accounts.terms_agreement, ("GET", "HEAD", "POST")),
    PageRoute("/healthz", health.healthz, guarded=False),
    PageRoute("/readyz", health.readyz, guarded=False),
]
