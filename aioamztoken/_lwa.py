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
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import quote_plus, urlencode

from ._errors import (
    InvalidClientError,
    InvalidGrantError,
    TokenEndpointError,
    TokenRefreshError,
)
from ._logging import redact
from ._models import Region, Token

__all__ = [
    "CLIENT_AUTH_METHODS",
    "DEFAULT_SCOPE",
    "ClientAuth",
    "TokenRequest",
    "authorization_url",
    "basic_authorization",
    "check_client_auth",
    "code_request",
    "make_pkce_pair",
    "parse_retry_after",
    "parse_token_response",
    "refresh_request",
]

DEFAULT_SCOPE = "advertising::campaign_management"
DEFAULT_EXPIRES_IN = 3600.0
_MAX_DESCRIPTION = 200
#: The largest token-endpoint body read (bytes): a token answer is a few hundred bytes, so
#: anything near this is not one, and reading more would only cost memory.
MAX_BODY_BYTES = 1 << 20
#: The deepest JSON nesting accepted in a token-endpoint body (a real answer is flat).
MAX_JSON_DEPTH = 32


ClientAuth = Literal["post", "basic"]
#: How the client authenticates (RFC 6749 section 2.3.1): ``"post"`` puts ``client_id`` and
#: ``client_secret`` in the form, as Amazon documents; ``"basic"`` sends them in an
#: ``Authorization: Basic`` header instead, which Amazon also accepts and some other
#: OAuth2 servers require.
CLIENT_AUTH_METHODS: tuple[ClientAuth, ...] = ("post", "basic")


def check_client_auth(client_auth: str) -> ClientAuth:
    """``client_auth`` if it is ``"post"`` or ``"basic"``; raise ``ValueError`` otherwise."""
    if client_auth == "post":
        return "post"
    if client_auth == "basic":
        return "basic"
    raise ValueError(f"client_auth must be 'post' or 'basic', not {client_auth!r}")


def basic_authorization(client_id: str, client_secret: str) -> str:
    """The ``Authorization`` header value of HTTP Basic client authentication.

    RFC 6749 section 2.3.1: the client id and the secret are each form-url-encoded
    (Appendix B: a space becomes ``+``, other reserved bytes ``%XX``) before they are
    joined with ``:`` and base64-encoded, so a ``:`` in either survives.
    """
    pair = f"{quote_plus(client_id, safe='')}:{quote_plus(client_secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode("ascii")).decode("ascii")


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """A POST to the token endpoint: ``form`` is sent url-encoded. Holds secrets.

    ``form`` holds the grant's parameters; the client's credentials are added by
    :attr:`body` (``client_auth="post"``) or :attr:`headers` (``"basic"``), so that
    :meth:`with_client_secret` can sign the same grant with another secret.
    """

    url: str
    form: dict[str, str] = field(repr=False)
    grant_type: str = "refresh_token"
    client_id: str = ""
    client_secret: str = field(default="", repr=False)
    client_auth: ClientAuth = "post"

    @property
    def body(self) -> bytes:
        """The url-encoded form, with the client's credentials when they go in the body."""
        form = self.form
        if self.client_auth == "post" and (self.client_id or self.client_secret):
            form = {**form, "client_id": self.client_id, "client_secret": self.client_secret}
        return urlencode(form).encode("ascii")

    @property
    def headers(self) -> dict[str, str]:
        """The request headers, ``Authorization: Basic`` included for ``client_auth="basic"``."""
        if self.client_auth != "basic":
            return dict(TOKEN_REQUEST_HEADERS)
        return {
            **TOKEN_REQUEST_HEADERS,
            "Authorization": basic_authorization(self.client_id, self.client_secret),
        }

    def with_client_secret(self, client_secret: str) -> TokenRequest:
        """The same request, authenticated with ``client_secret``."""
        return replace(self, client_secret=client_secret)

    @property
    def secrets(self) -> tuple[str, ...]:
        """The secret values of the form (client secret, refresh token, code, verifier),
        which nothing derived from the request or its answer may show."""
        found = [v for k, v in self.form.items() if k in _SECRET_FIELDS and v]
        if self.client_secret:
            found.append(self.client_secret)
        return tuple(found)


_SECRET_FIELDS = frozenset({"client_secret", "refresh_token", "code", "code_verifier"})


#: Headers of every token request.
TOKEN_REQUEST_HEADERS = {
    "Content-Type": "application/x-www-form-urlencoded;charset=UTF-8",
    "Accept": "application/json",
}


def refresh_request(
    token_url: str,
    client_id: str,
    client_secret: str,
    refresh_token: str,
    *,
    client_auth: ClientAuth = "post",
) -> TokenRequest:
    """The request that trades a refresh token for a new access token."""
    return TokenRequest(
        token_url,
        {"grant_type": "refresh_token", "refresh_token": refresh_token},
        "refresh_token",
        client_id,
        client_secret,
        check_client_auth(client_auth),
    )


def code_request(
    token_url: str,
    client_id: str,
    client_secret: str,
    code: str,
    redirect_uri: str,
    code_verifier: str | None = None,
    *,
    client_auth: ClientAuth = "post",
) -> TokenRequest:
    """The request that trades an authorization code for the first token pair."""
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
    if code_verifier is not None:
        form["code_verifier"] = code_verifier
    return TokenRequest(
        token_url,
        form,
        "authorization_code",
        client_id,
        client_secret,
        check_client_auth(client_auth),
    )


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


def _clip(text: object, secrets: Iterable[str] = ()) -> str | None:
    if not isinstance(text, str):
        return None
    # Server text may echo what it was sent: redacted before anyone sees it.
    text = redact(" ".join(text.split()), secrets)
    return text if len(text) <= _MAX_DESCRIPTION else text[: _MAX_DESCRIPTION - 1] + "…"


class _TooDeep(ValueError):
    pass


def _depth(value: Any) -> int:
    """The nesting depth of decoded JSON, counted without recursion."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if deepest > MAX_JSON_DEPTH:
                break
            todo.extend(
                (child, depth + 1) for child in (item.values() if isinstance(item, dict) else item)
            )
    return deepest


def _decode_json(body: bytes) -> Any:
    try:
        data = json.loads(body.decode("utf-8"))
    except RecursionError:  # the decoder recurses per level: far too deep for a token
        raise _TooDeep from None
    except (UnicodeDecodeError, ValueError):
        return None
    if _depth(data) > MAX_JSON_DEPTH:
        raise _TooDeep
    return data


def _is_header_safe(value: str) -> bool:
    """True for a non-empty run of visible ASCII: what may follow ``Bearer `` in a header."""
    return bool(value) and value.isascii() and all("!" <= c <= "~" for c in value)


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
    secrets: Iterable[str] = (),
) -> Token:
    """Turn the token endpoint's answer into a :class:`Token`, or raise the typed error.

    ``sent_at`` is when the request was sent (POSIX seconds): the token's lifetime
    counts from then, not from when the answer was read. When the answer carries no
    refresh token, ``previous_refresh_token`` is kept.

    The server's ``error`` and ``error_description`` reach messages and attributes only
    redacted: anything shaped like a secret, and each of ``secrets`` (what the request
    sent: refresh token, client secret, code), becomes ``[redacted]``.

    Raises :class:`InvalidGrantError`, :class:`InvalidClientError` or
    :class:`TokenRefreshError` for refusals (never worth retrying) and
    :class:`TokenEndpointError` for transient failures (5xx, 429, garbage), whose
    ``retry_after`` is set from the header when the server sent one.

    Inputs are bounded: a body over :data:`MAX_BODY_BYTES`, JSON nested deeper than
    :data:`MAX_JSON_DEPTH` and an ``access_token`` that is not visible ASCII (whitespace,
    CR, LF, NUL: it could not go into an ``Authorization`` header) raise
    :class:`TokenEndpointError`. A 200 that issues no refresh token where none was held
    before (a code exchange) raises :class:`TokenRefreshError`: the code is spent.
    """
    if len(body) > MAX_BODY_BYTES:
        raise TokenEndpointError(
            f"token endpoint answered {status} with a body over {MAX_BODY_BYTES} bytes",
            status=status,
        )
    try:
        data = _decode_json(body)
    except _TooDeep:
        raise TokenEndpointError(
            f"token endpoint answered {status} with JSON nested deeper than {MAX_JSON_DEPTH} "
            "levels",
            status=status,
        ) from None
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
        if not _is_header_safe(access):
            raise TokenEndpointError(
                "token endpoint answered 200 with an access_token holding whitespace or "
                "control characters, which no HTTP header can carry",
                status=status,
            )
        refresh = data.get("refresh_token") or previous_refresh_token
        if not isinstance(refresh, str) or not refresh:
            # Only a code exchange holds no refresh token before; its code is spent now.
            raise TokenRefreshError(
                "token endpoint answered 200 but issued no refresh token: the authorization "
                "code is used up, so the account must be authorized again",
                status=status,
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
    secrets = tuple(secrets)
    error = _clip(error, secrets) if isinstance(error, str) else None
    description = _clip(data.get("error_description"), secrets) if isinstance(data, dict) else None
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
    token_url: str,
    client_id: str,
    client_secret: str,
    scope: str,
    *,
    client_auth: ClientAuth = "post",
) -> TokenRequest:
    """The request for a grantless token (``client_credentials`` grant) for ``scope``.

    Grantless SP-API operations take such a token; no refresh token is involved
    ("Grantless Operations", SP-API docs: ``scope=sellingpartnerapi::notifications``).
    """
    return TokenRequest(
        token_url,
        {"grant_type": "client_credentials", "scope": scope},
        "client_credentials",
        client_id,
        client_secret,
        check_client_auth(client_auth),
    )
