"""The Login with Amazon protocol without I/O: build token requests, parse answers.

Plain functions over plain data, in the manner of h11: no sockets, no event loop.
The manager sends what :func:`refresh_request` and :func:`code_request` build, and
hands the answer to :func:`parse_token_response`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import secrets
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode

from ._errors import (
    InvalidClientError,
    InvalidGrantError,
    TokenEndpointError,
    TokenRefreshError,
)
from ._models import Region, Token

__all__ = [
    "DEFAULT_SCOPE",
    "TokenRequest",
    "authorization_url",
    "code_request",
    "make_pkce_pair",
    "parse_retry_after",
    "parse_token_response",
    "refresh_request",
]

DEFAULT_SCOPE = "advertising::campaign_management"
DEFAULT_EXPIRES_IN = 3600.0
_MAX_DESCRIPTION = 200


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """A POST to the token endpoint: ``form`` is sent url-encoded. Holds secrets."""

    url: str
    form: dict[str, str] = field(repr=False)
    grant_type: str = "refresh_token"

    @property
    def body(self) -> bytes:
        """The url-encoded form."""
        return urlencode(self.form).encode("ascii")


#: Headers of every token request.
TOKEN_REQUEST_HEADERS = {
    "Content-Type": "application/x-www-form-urlencoded;charset=UTF-8",
    "Accept": "application/json",
}


def refresh_request(
    token_url: str, client_id: str, client_secret: str, refresh_token: str
) -> TokenRequest:
    """The request that trades a refresh token for a new access token."""
    return TokenRequest(
        token_url,
        {
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": client_id,
            "client_secret": client_secret,
        },
        "refresh_token",
    )


def code_request(
    token_url: str,
    client_id: str,
    client_secret: str,
    code: str,
    redirect_uri: str,
    code_verifier: str | None = None,
) -> TokenRequest:
    """The request that trades an authorization code for the first token pair."""
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "client_id": client_id,
        "client_secret": client_secret,
    }
    if code_verifier is not None:
        form["code_verifier"] = code_verifier
    return TokenRequest(token_url, form, "authorization_code")


def authorization_url(
    region: Region,
    client_id: str,
    *,
    redirect_uri: str,
    state: str,
    scope: str = DEFAULT_SCOPE,
    code_challenge: str | None = None,
    base_url: str | None = None,
) -> str:
    """The consent URL for ``region`` (or ``base_url``), with state and optional PKCE."""
    if not state:
        raise ValueError("state must be a non-empty, unguessable string (it guards against CSRF)")
    params = {
        "client_id": client_id,
        "scope": scope,
        "response_type": "code",
        "redirect_uri": redirect_uri,
        "state": state,
    }
    if code_challenge is not None:
        params["code_challenge"] = code_challenge
        params["code_challenge_method"] = "S256"
    return f"{base_url or region.authorization_url}?{urlencode(params)}"


def make_pkce_pair() -> tuple[str, str]:
    """A fresh PKCE ``(code_verifier, code_challenge)`` pair, the challenge being S256."""
    verifier = secrets.token_urlsafe(64)[:96]
    return verifier, pkce_challenge(verifier)


def pkce_challenge(verifier: str) -> str:
    """The S256 challenge of ``verifier`` (RFC 7636)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _clip(text: object) -> str | None:
    if not isinstance(text, str):
        return None
    text = " ".join(text.split())
    return text if len(text) <= _MAX_DESCRIPTION else text[: _MAX_DESCRIPTION - 1] + "…"


def _decode_json(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None


def _describe_body(body: bytes, content_type: str | None) -> str:
    kind = (content_type or "unknown type").split(";")[0].strip() or "unknown type"
    return f"a {kind} body of {len(body)} bytes"


def parse_expires_in(value: Any) -> float:
    """``expires_in`` as seconds; Amazon has sent it as a number and as a string."""
    if value is None:
        return DEFAULT_EXPIRES_IN
    if isinstance(value, bool):
        raise ValueError("expires_in is a boolean")
    if isinstance(value, str):
        value = value.strip()
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError("expires_in is not a number") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError("expires_in is not a positive number")
    return seconds


def parse_token_response(
    status: int,
    body: bytes,
    *,
    sent_at: float,
    content_type: str | None = None,
    retry_after: str | None = None,
    previous_refresh_token: str | None = None,
) -> Token:
    """Turn the token endpoint's answer into a :class:`Token`, or raise the typed error.

    ``sent_at`` is when the request was sent (POSIX seconds): the token's lifetime
    counts from then, not from when the answer was read. When the answer carries no
    refresh token, ``previous_refresh_token`` is kept.

    Raises :class:`InvalidGrantError`, :class:`InvalidClientError` or
    :class:`TokenRefreshError` for refusals (never worth retrying) and
    :class:`TokenEndpointError` for transient failures (5xx, 429, garbage), whose
    ``retry_after`` is set from the header when the server sent one.
    """
    data = _decode_json(body)
    if status == 200:
        if not isinstance(data, dict):
            raise TokenEndpointError(
                f"token endpoint answered 200 with {_describe_body(body, content_type)}, "
                "not a JSON object",
                status=status,
            )
        access = data.get("access_token")
        if not isinstance(access, str) or not access:
            raise TokenEndpointError(
                "token endpoint answered 200 without an access_token", status=status
            )
        refresh = data.get("refresh_token") or previous_refresh_token
        if not isinstance(refresh, str) or not refresh:
            raise TokenEndpointError(
                "token endpoint answered 200 without a refresh_token", status=status
            )
        try:
            lifetime = parse_expires_in(data.get("expires_in"))
        except ValueError as exc:
            raise TokenEndpointError(
                f"token endpoint answered 200 with an unusable expires_in: {exc}", status=status
            ) from None
        token_type = data.get("token_type")
        scope = data.get("scope")
        return Token(
            access,
            refresh,
            sent_at + lifetime,
            token_type if isinstance(token_type, str) and token_type else "bearer",
            scope if isinstance(scope, str) else None,
            sent_at,
        )

    error = data.get("error") if isinstance(data, dict) else None
    error = error if isinstance(error, str) else None
    description = _clip(data.get("error_description")) if isinstance(data, dict) else None
    detail = (
        f"{error}: {description}"
        if error and description
        else error or _describe_body(body, content_type)
    )

    transient = error in ("temporarily_unavailable", "server_error")
    if status in (408, 429) or status >= 500 or transient:
        raise TokenEndpointError(
            f"token endpoint answered {status} ({detail})",
            status=status,
            retry_after=parse_retry_after(retry_after),
        )
    if error == "invalid_grant":
        raise InvalidGrantError(
            f"the refresh token or authorization code was rejected ({detail}); "
            "the account needs re-authorization",
            error=error,
            description=description,
            status=status,
        )
    if error == "invalid_client" or (status == 401 and error is None):
        raise InvalidClientError(
            f"the client id or client secret was rejected ({detail})",
            error=error or "invalid_client",
            description=description,
            status=status,
        )
    if 400 <= status < 500:
        raise TokenRefreshError(
            f"token endpoint refused the request with {status} ({detail})",
            error=error,
            description=description,
            status=status,
        )
    raise TokenEndpointError(f"token endpoint answered {status} ({detail})", status=status)


def client_credentials_request(
    token_url: str, client_id: str, client_secret: str, scope: str
) -> TokenRequest:
    """The request for a grantless token (``client_credentials`` grant) for ``scope``.

    Grantless SP-API operations take such a token; no refresh token is involved
    ("Grantless Operations", SP-API docs: ``scope=sellingpartnerapi::notifications``).
    """
    return TokenRequest(
        token_url,
        {
            "grant_type": "client_credentials",
            "scope": scope,
            "client_id": client_id,
            "client_secret": client_secret,
        },
        "client_credentials",
    )
