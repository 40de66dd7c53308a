"""``consent_app``: the aiohttp.web application that onboards accounts through Amazon's consent.

Routes (relative to where the app is mounted):

- ``GET /`` a page with a "Connect" button (a GET form to ``connect``).
- ``GET /connect?account=ID`` 302 to Amazon's consent page with a fresh state.
- ``GET /callback`` where Amazon sends the browser back: checks the state, exchanges the
  code, saves the account.
- ``GET /accounts`` the operator page, only when ``operator`` is given.

The two Amazon flows, as Amazon documents them:

**Ads API (Login with Amazon authorization code grant).** The consent page is the
region's ``/ap/oa`` (``https://www.amazon.com/ap/oa``, ``https://eu.account.amazon.com/ap/oa``,
``https://apac.account.amazon.com/ap/oa``) with ``client_id``, ``scope``,
``response_type=code``, ``redirect_uri``, ``state``, and PKCE's ``code_challenge`` with
``code_challenge_method=S256``. Amazon answers on the redirect URI with ``code`` and
``state``, or with ``error`` (``access_denied`` when the user declines) and
``error_description``. The code works once, for 5 minutes, and is exchanged with the same
``redirect_uri`` and the PKCE ``code_verifier``.

**SP-API (the website authorization workflow).** The OAuth authorization URI is the
Seller Central URL of the seller's marketplace plus ``/apps/authorize/consent``, with
``application_id`` (the app's ``amzn1.sp.solution.…`` id), ``state``, optionally
``redirect_uri`` (one of the app's registered OAuth redirect URIs; without it Amazon uses
the first registered one) and ``version=beta`` while the app is in draft status (without
it a draft app fails with ``MD1000``). Amazon then loads the redirect URI with ``state``,
``selling_partner_id`` and ``spapi_oauth_code`` (and ``mws_auth_token`` for hybrid apps,
ignored here). The code is exchanged at ``https://api.amazon.com/auth/o2/token`` with
``grant_type=authorization_code``, ``code``, ``redirect_uri``, ``client_id`` and
``client_secret`` (no PKCE). Amazon recommends a short-lived state unique to the user and
``Referrer-Policy: no-referrer``, which every response here carries. Amazon's newer
documents add a log-in URI step (``amazon_callback_uri``, ``amazon_state``) in which the
app authenticates the seller on its own site; this app does not implement that step.
Public SP-API apps must be re-authorized every 365 days: the operator page gives the
re-authorize link of each account.

Security: ``/connect`` trusts its caller to name the account. Mount the app behind your
own authentication (a middleware of the parent application applies to a sub-app) when
the account ids must not be chosen by the visitor.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlencode, urljoin, urlsplit

from aiohttp import hdrs, web

from .._errors import AccountNotFoundError, AmzTokenError, InvalidGrantError, StorageError
from .._lwa import DEFAULT_SCOPE, make_pkce_pair
from .._models import Region
from . import _pages
from ._state import PendingConsent, StateError, StateSealer

if TYPE_CHECKING:
    from .._manager import AsyncTokenManager

__all__ = ["SELLER_CENTRAL_URLS", "SETTINGS", "ConsentSettings", "consent_app"]

logger = logging.getLogger("aioamztoken.web")

Operator = Callable[[web.Request], "bool | Awaitable[bool]"]

#: The Seller Central origin used by default for each region's SP-API consent page; a
#: seller of another marketplace (``sellercentral.amazon.co.uk``, ``…amazon.com.au``, …)
#: needs that marketplace's origin: give it as the manager's ``authorization_base_url``.
SELLER_CENTRAL_URLS: dict[Region, str] = {
    Region.NA: "https://sellercentral.amazon.com",
    Region.EU: "https://sellercentral-europe.amazon.com",
    Region.FE: "https://sellercentral.amazon.co.jp",
}
SELLER_CENTRAL_CONSENT_PATH = "/apps/authorize/consent"
_API_NAMES = {"ads": "Amazon Ads", "sp-api": "Amazon Selling Partner API"}


@dataclass(frozen=True, slots=True)
class ConsentSettings:
    """What one mounted consent app is configured with (kept under :data:`SETTINGS`)."""

    manager: AsyncTokenManager
    redirect_uri: str
    api: Literal["ads", "sp-api"]
    scope: str
    success_url: str | None
    operator: Operator | None
    application_id: str | None
    draft: bool
    sealer: StateSealer

    @property
    def api_name(self) -> str:
        return _API_NAMES[self.api]


#: The key of an app's :class:`ConsentSettings`: ``app[SETTINGS]``.
SETTINGS = web.AppKey("aioamztoken.web.settings", ConsentSettings)


def consent_app(
    manager: AsyncTokenManager,
    *,
    redirect_uri: str,
    api: Literal["ads", "sp-api"] = "ads",
    scope: str | None = None,
    success_url: str | None = None,
    state_ttl: float = 600,
    operator: Operator | None = None,
    application_id: str | None = None,
    draft: bool = False,
    state_key: str | bytes | None = None,
) -> web.Application:
    """An ``aiohttp.web.Application`` that connects accounts to ``manager`` through Amazon.

    Mount it with ``app.add_subapp("/amazon", consent_app(mgr, redirect_uri=...))``; the
    settings live in the app (``app[SETTINGS]``), so one process may mount it twice.

    - ``redirect_uri``: the public URL of this app's ``/callback``, exactly as registered
      with Amazon (it is sent to Amazon and used for the code exchange).
    - ``api``: ``"ads"`` (Login with Amazon consent, PKCE S256) or ``"sp-api"`` (Seller
      Central's website authorization workflow, which needs ``application_id``, the app's
      ``amzn1.sp.solution.…`` id). For SP-API the consent page is the manager's
      ``authorization_base_url`` when set, else the region's Seller Central
      (:data:`SELLER_CENTRAL_URLS`) plus ``/apps/authorize/consent``. An
      ``authorization_base_url`` that is a Login with Amazon page (``…/ap/oa``, set for
      the Ads API) is not used as such: on an Amazon host the region's Seller Central is,
      on another host (the emulator) that host's ``/apps/authorize/consent``.
    - ``scope``: the Ads consent scope (default ``advertising::campaign_management``).
    - ``success_url``: where to send the browser after success (303); default a plain page.
    - ``state_ttl``: seconds a ``/connect`` link's state stays good (default 600).
    - ``operator``: a callable taking the request and returning (or awaiting) whether it
      may see ``GET /accounts``; without it that page does not exist.
    - ``draft``: add ``version=beta`` to the SP-API consent URL, for an app still in draft.
    - ``state_key``: the key material states are sealed under (AES-GCM); default the
      manager's client secret, which every process of the app shares. Give one explicitly
      to keep links valid across a client-secret rotation.

    Every response carries ``Cache-Control: no-store`` and ``Referrer-Policy: no-referrer``.
    Raises ``ValueError`` for a bad ``api``, ``redirect_uri`` or ``state_ttl``, or an
    SP-API app without ``application_id``.
    """
    if api not in _API_NAMES:
        raise ValueError(f"api must be 'ads' or 'sp-api', not {api!r}")
    parts = urlsplit(redirect_uri)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError("redirect_uri must be an absolute http:// or https:// URL")
    if api == "sp-api" and not application_id:
        raise ValueError("api='sp-api' needs application_id (the app's amzn1.sp.solution.… id)")
    if operator is not None and not callable(operator):
        raise TypeError("operator must be a callable taking the request")
    key = state_key if state_key is not None else _client_secret_of(manager)
    key_bytes = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    binding = "|".join((manager.client_id, api, redirect_uri, application_id or ""))
    settings = ConsentSettings(
        manager=manager,
        redirect_uri=redirect_uri,
        api=api,
        scope=scope or DEFAULT_SCOPE,
        success_url=success_url,
        operator=operator,
        application_id=application_id,
        draft=draft,
        sealer=StateSealer(key_bytes, binding=binding, ttl=state_ttl),
    )
    app = web.Application()
    app[SETTINGS] = settings
    app.on_response_prepare.append(_protect)
    app.router.add_get("/", _start, name="start")
    app.router.add_get("/connect", _connect, name="connect")
    app.router.add_get("/callback", _callback, name="callback")
    if operator is not None:
        app.router.add_get("/accounts", _accounts, name="accounts")
    return app


def _client_secret_of(manager: AsyncTokenManager) -> str:
    """The manager's (newest) client secret: the default key material of states."""
    many = getattr(manager, "_client_secrets", None)
    if many and not isinstance(many, str):
        return str(next(iter(many)))
    secret = getattr(manager, "_client_secret", None)
    if isinstance(secret, str) and secret:
        return secret
    if isinstance(secret, (list, tuple)) and secret:
        return str(secret[0])
    raise ValueError("pass state_key: the manager's client secret cannot be read")


_SECURITY_HEADERS = {
    hdrs.CACHE_CONTROL: "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; frame-ancestors 'none'"
    ),
}


async def _protect(request: web.Request, response: web.StreamResponse) -> None:
    # Codes and states travel in URLs: no cache may keep a page, no Referer may carry one.
    response.headers.update(_SECURITY_HEADERS)


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def _failure(
    title: str, message: str, status: int = 400, account: str | None = None
) -> web.Response:
    return _html(_pages.error_page(title=title, message=message, account_id=account), status)


def _param(request: web.Request, name: str) -> str | None:
    values = request.query.getall(name, [])
    if len(values) != 1:
        return None if not values else ""
    value = values[0].strip()
    return value or None


def _valid_account(account: str | None) -> str | None:
    """``None`` when ``account`` is acceptable, else what is wrong with it."""
    if account is None:
        return None
    if not account:
        return "The account was named more than once or is empty."
    if len(account) > 256:
        return "The account name is too long (256 characters at most)."
    if any(ord(c) < 32 or ord(c) == 127 for c in account):
        return "The account name contains control characters."
    try:
        account.encode("utf-8")
    except UnicodeEncodeError:
        return "The account name is not valid text."
    return None


async def _start(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    account = _param(request, "account")
    if _valid_account(account) is not None:
        account = None
    return _html(
        _pages.start_page(
            api_name=settings.api_name,
            account_id=account,
            account_required=settings.api == "ads",
        )
    )


async def _connect(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    account = _param(request, "account")
    problem = _valid_account(account)
    if problem is not None:
        return _failure("Cannot start the authorization", problem)
    if account is None and settings.api == "ads":
        return _failure(
            "Cannot start the authorization",
            "Say which account to connect: /connect?account=<id>.",
        )
    if settings.api == "ads":
        verifier, challenge = make_pkce_pair()
        state = settings.sealer.seal(account, verifier)
        location = settings.manager.authorization_url(
            redirect_uri=settings.redirect_uri,
            state=state,
            scope=settings.scope,
            code_challenge=challenge,
        )
    else:
        state = settings.sealer.seal(account, None)
        location = _seller_central_url(settings, state)
    raise web.HTTPFound(location)


def _seller_central_url(settings: ConsentSettings, state: str) -> str:
    manager = settings.manager
    base = manager.authorization_base_url
    if base is not None and urlsplit(base).path.rstrip("/").endswith("/ap/oa"):
        # A Login with Amazon consent page (set for the Ads API) is no Seller Central page:
        # Amazon's own host means the region's Seller Central, another host (an emulator)
        # its own Seller Central path.
        parts = urlsplit(base)
        labels = (parts.hostname or "").split(".")
        base = (
            None
            if "amazon" in labels[:-1]
            else f"{parts.scheme}://{parts.netloc}{SELLER_CENTRAL_CONSENT_PATH}"
        )
    base = base or SELLER_CENTRAL_URLS[manager.region] + SELLER_CENTRAL_CONSENT_PATH
    params = {
        "application_id": settings.application_id or "",
        "state": state,
        "redirect_uri": settings.redirect_uri,
    }
    if settings.draft:
        params["version"] = "beta"
    return base + ("&" if "?" in base else "?") + urlencode(params)


async def _callback(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    sealer = settings.sealer
    pending: PendingConsent | None = None
    refusal: StateError | None = None
    try:
        pending = sealer.open(_param(request, "state"))
    except StateError as exc:
        refusal = exc
    else:
        # Spent at once, with no await in between: two requests racing with one state
        # cannot both get past this point.
        sealer.spend(pending)
    error = _param(request, "error")
    if error is not None:
        # The user declined (or Amazon failed): say so, whatever the state.
        description = _param(request, "error_description")
        words = {
            "access_denied": "Access was not granted at Amazon, so the account was not connected.",
        }.get(error, "Amazon did not authorize the account.")
        detail = f" Amazon said: {error[:64]}" + (f" ({description[:200]})" if description else "")
        logger.info("consent callback: Amazon answered error=%r", error[:64])
        account_id = None if pending is None else pending.account_id
        return _failure("Authorization declined", words + detail + ".", account=account_id)
    if pending is None:
        assert refusal is not None
        titles = {
            "missing": "Missing state",
            "invalid": "Unknown state",
            "expired": "Authorization link expired",
            "reused": "Authorization link already used",
        }
        logger.info("consent callback refused: %s state", refusal.reason)
        return _failure(titles[refusal.reason], str(refusal))
    if settings.api == "ads":
        code = _param(request, "code")
        account = pending.account_id
    else:
        code = _param(request, "spapi_oauth_code")
        seller = _param(request, "selling_partner_id")
        account = pending.account_id or seller
        if _valid_account(account) is not None:
            account = None
    if not code:
        return _failure(
            "Missing authorization code",
            "Amazon's answer carried no authorization code (or carried it twice).",
            account=pending.account_id,
        )
    if account is None:
        return _failure(
            "Missing seller id",
            "Amazon's answer named no selling partner, so the account cannot be named.",
        )
    if await _authorized_since(settings.manager, account, pending):
        return _failure(
            "Authorization link already used",
            "This authorization link has already been used.",
            account=account,
        )
    try:
        await settings.manager.exchange_code(
            account,
            code,
            redirect_uri=settings.redirect_uri,
            code_verifier=pending.code_verifier,
        )
    except StorageError as exc:
        logger.error("consent callback: could not save account %r: %s", account, type(exc).__name__)
        return _failure(
            "Could not save the account",
            "Amazon authorized the account but it could not be saved. Try again later.",
            status=500,
            account=account,
        )
    except AmzTokenError as exc:
        logger.warning(
            "consent callback: code exchange for %r failed: %s", account, type(exc).__name__
        )
        reason = (
            "Amazon refused the authorization code (it was already used, has expired, or "
            "belongs to another request)."
            if isinstance(exc, InvalidGrantError)
            else "Amazon's token service did not accept the authorization code."
        )
        return _failure("Could not complete the authorization", reason, status=502, account=account)
    logger.info("consent callback: account %r connected", account)
    if settings.success_url:
        raise web.HTTPSeeOther(settings.success_url)
    return _html(_pages.success_page(account_id=account, api_name=settings.api_name))


async def _authorized_since(
    manager: AsyncTokenManager, account: str, pending: PendingConsent
) -> bool:
    """True when the account was authorized after ``pending`` was issued: its state has
    been used by some process (or superseded), as the store's ``authorized_at`` shows."""
    try:
        status = await manager.status(account)
    except (AccountNotFoundError, AmzTokenError):
        return False
    authorized_at = getattr(status, "authorized_at", None)
    return isinstance(authorized_at, (int, float)) and authorized_at >= pending.issued_at


async def _accounts(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    operator = settings.operator
    assert operator is not None
    allowed = operator(request)
    if inspect.isawaitable(allowed):
        allowed = await allowed
    if not allowed:
        return _html(_pages.forbidden_page(), 403)
    manager = settings.manager
    try:
        account_ids = await manager.accounts()
    except StorageError:
        return _failure("Cannot list accounts", "The token store could not be read.", 500)
    # The link followed from this page is the path this app serves (mount prefix
    # included), so it works on whatever host the page was reached through; the one shown
    # to copy is the public URL, next to the redirect URI.
    path = str(request.app.router["connect"].url_for())
    public = _public_connect_url(settings.redirect_uri, path)
    rows = []
    for account_id in account_ids:
        query = "?" + urlencode({"account": account_id})
        link, href = public + query, path + query
        try:
            status = await manager.status(account_id)
        except AmzTokenError as exc:
            rows.append(
                _pages.AccountRow(
                    account_id, "unreadable", None, type(exc).__name__, None, None, link, href
                )
            )
            continue
        rows.append(
            _pages.AccountRow(
                account_id,
                str(status.state),
                status.expires_at,
                status.last_error,
                getattr(status, "authorized_at", None),
                getattr(status, "reauth_due_at", None),
                link,
                href,
            )
        )
    return _html(_pages.accounts_page(rows, api_name=settings.api_name))


def _public_connect_url(redirect_uri: str, path: str) -> str:
    """The public URL of ``/connect``: beside the redirect URI when that is this app's
    ``/callback`` (whatever prefix a proxy puts in front), else ``path`` on its origin."""
    parts = urlsplit(redirect_uri)
    if parts.path.rstrip("/").endswith("/callback"):
        return urljoin(parts.scheme + "://" + parts.netloc + parts.path.rstrip("/"), "connect")
    return f"{parts.scheme}://{parts.netloc}{path}"
