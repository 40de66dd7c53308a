"""Helpers that feed peer SDKs from a :class:`~aioamztoken.BlockingTokenManager`.

What each peer offers (checked against their source: python-amazon-sp-api 2.1,
python-amazon-ad-api 1.2):

- **python-amazon-sp-api** has a public hook for where tokens come from: the
  ``auth_token_client_class`` argument of every API class. :func:`sp_api_token_client`
  builds such a class; its token is read from the manager for every request (the SDK
  asks for ``auth.access_token`` each time it builds headers), grantless operations
  included. The SDK has **no hook for a retry**: a 403 for an expired token raises
  ``SellingApiForbiddenException``. Wrap the call in :func:`call_with_refresh`.
- **python-amazon-ad-api** has **no hook** for where tokens come from, only a fixed
  ``access_token=`` per client object, and sends with ``requests.request`` directly (no
  session, so no ``requests`` auth can be attached). :func:`ad_api_client` makes the
  client read the manager's token for every request by overriding its public ``auth``
  property in a subclass; a 401 raises ``UnauthorizedException``: wrap the call in
  :func:`call_with_refresh`.

:func:`call_with_refresh` applies the rules of the adapters (``aioamztoken._signing``):
a rejected token (401; for the SP-API also a 403 whose errors say the token expired or
is revoked, malformed or invalid) causes one compare-and-refresh and one more call; a
token that the refresh did not cure is not refreshed again for a cooldown. Any other
error (a 403 for a missing role) is raised at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ._signing import SigningPolicy, Verdict, decide

if TYPE_CHECKING:
    from ._blocking import BlockingTokenManager

__all__ = ["ad_api_client", "call_with_refresh", "sp_api_token_client"]

_R = TypeVar("_R")
#: What the peers' credential checks are given in place of secrets they never use.
_UNUSED = "unused: tokens come from aioamztoken"


class _AccessToken:
    """What the peers read a token from: ``.access_token`` (secrets kept out of repr)."""

    __slots__ = ("access_token", "expires_in", "token_type")

    def __init__(self, access_token: str) -> None:
        self.access_token = access_token
        self.token_type = "bearer"
        self.expires_in = None

    def __repr__(self) -> str:
        return "<AccessToken>"


def sp_api_token_client(manager: BlockingTokenManager, account_id: str | None) -> type:
    """A class for python-amazon-sp-api's ``auth_token_client_class`` argument.

    ``account_id`` is the account whose token is sent (``None`` for an object used only
    for grantless operations); grantless operations get
    :meth:`~aioamztoken.BlockingTokenManager.get_grantless_token` for the SDK's ``grantless_scope``.
    The SDK's own refresh token and LwA requests are never used.
    """

    class AioamztokenTokenClient:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def get_auth(self) -> _AccessToken:
            if account_id is None:
                raise ValueError("this client was made for grantless operations only")
            return _AccessToken(manager.get_access_token(account_id))

        def get_grantless_auth(self, scope: str = "sellingpartnerapi::notifications") -> Any:
            return _AccessToken(manager.get_grantless_token(scope))

        def authorize_auth_code(self, auth_code: str) -> Any:
            raise NotImplementedError(
                "exchange codes with BlockingTokenManager.exchange_code(), which stores the "
                "refresh token"
            )

    return AioamztokenTokenClient


def sp_api_credentials(manager: BlockingTokenManager) -> dict[str, str]:
    """The ``credentials`` python-amazon-sp-api checks for; its secret is not needed."""
    return {"lwa_app_id": manager.manager.client_id, "lwa_client_secret": _UNUSED}


def ad_api_client(
    api_class: type[_R],
    manager: BlockingTokenManager,
    account_id: str,
    *,
    profile_id: str | int | None = None,
    endpoint: str | None = None,
    **kwargs: Any,
) -> _R:
    """An object of a python-amazon-ad-api class (``ad_api.api.Profiles``...) whose every
    request carries the manager's token for ``account_id``.

    ``profile_id`` goes in ``Amazon-Advertising-API-Scope``; ``endpoint`` replaces the
    marketplace's origin (a sandbox, an emulator); other arguments go to the class.
    """
    from ad_api.auth import (  # type: ignore[import-untyped,import-not-found,unused-ignore]
        AccessTokenResponse,
    )

    def auth(self: Any) -> Any:
        return AccessTokenResponse(access_token=manager.get_access_token(account_id))

    signed = type(api_class.__name__, (api_class,), {"auth": property(auth)})
    credentials = {
        "client_id": manager.manager.client_id,
        "client_secret": _UNUSED,
        "refresh_token": _UNUSED,
    }
    if profile_id is not None:
        credentials["profile_id"] = str(profile_id)
    # The SDK insists on a profile id unless told not to (Profiles needs none).
    kwargs.setdefault("verify_additional_credentials", profile_id is not None)
    client: Any = signed(credentials=credentials, **kwargs)
    if endpoint is not None:
        client.endpoint = endpoint.rstrip("/")
    return client  # type: ignore[no-any-return]


def call_with_refresh(
    manager: BlockingTokenManager,
    account_id: str,
    call: Callable[[], _R],
    *,
    api: str = "sp-api",
) -> _R:
    """``call()``; if a peer SDK raised for a rejected token, refresh once and call again.

    ``api`` is ``"sp-api"`` or ``"ads"`` (which answers count as a rejected token).
    The second outcome is returned or raised whatever it is: never a loop.
    """
    policy = SigningPolicy(api, manager.manager.client_id)
    guard = manager.token_source(account_id).guard
    token = manager.get_access_token(account_id)
    try:
        return call()
    except Exception as exc:
        status, body = _status_and_body(exc)
        verdict = decide(
            policy,
            guard,
            status=status,
            body=body,
            token=token,
            retried=False,
            replayable=True,
            now=time.monotonic(),
        )
        if verdict is not Verdict.RETRY:
            raise
    token = manager.refresh_if_current(account_id, token).access_token
    try:
        return call()
    except Exception as exc:
        status, body = _status_and_body(exc)
        decide(
            policy,
            guard,
            status=status,
            body=body,
            token=token,
            retried=True,
            replayable=True,
            now=time.monotonic(),
        )
        raise


def _status_and_body(exc: BaseException) -> tuple[int, bytes | None]:
    """The HTTP status and error body a peer's exception carries (``code``, ``error``)."""
    code = getattr(exc, "code", None)
    status = code if isinstance(code, int) and not isinstance(code, bool) else 0
    error = getattr(exc, "error", None)
    if isinstance(error, list):
        error = {"errors": error}
    try:
        body = json.dumps(error).encode("utf-8") if error is not None else None
    except (TypeError, ValueError):
        body = None
    return status, body
