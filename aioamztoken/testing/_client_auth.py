"""Client authentication at the emulated token endpoint: which secrets, which methods.

RFC 6749 section 2.3.1 lets a client authenticate with the credentials in the form
(``client_secret_post``) or in an ``Authorization: Basic`` header
(``client_secret_basic``), and forbids using more than one method in a request.
Amazon accepts both; other servers accept only Basic. During a rotation Amazon accepts
an old and a new secret.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Collection
from urllib.parse import unquote_plus

__all__ = ["CLIENT_AUTH_METHODS", "ClientAuthPolicy", "decode_basic_auth"]

CLIENT_AUTH_METHODS = ("post", "basic")


class ClientAuthPolicy:
    """What the token endpoint accepts: one client id, its secrets, and the methods.

    ``check`` answers ``None`` for an authenticated client, or the ``(status, error,
    description)`` to answer otherwise.
    """

    def __init__(self, methods: Collection[str]) -> None:
        self.methods = check_methods(methods)

    def check(
        self,
        client_id: str,
        secrets: Collection[str],
        header: str | None,
        form: dict[str, str],
    ) -> tuple[int, str, str] | None:
        in_form = "client_secret" in form
        if header is not None and in_form:
            return (
                400,
                "invalid_request",
                "The client used more than one authentication method (Basic and form)",
            )
        if header is None:
            if "post" not in self.methods:
                return 401, "invalid_client", "Client authentication failed: use HTTP Basic"
            if form.get("client_id") == client_id and form.get("client_secret") in secrets:
                return None
            return _REJECTED
        if "basic" not in self.methods:
            return (
                401,
                "invalid_client",
                "Client authentication failed: send the credentials in the form",
            )
        credentials = decode_basic_auth(header)
        if credentials is None:
            return _REJECTED
        login, password = credentials
        # RFC 6749 (2.3.1) form-encodes the credentials before Basic; accept both.
        for login_, password_ in ((login, password), (unquote_plus(login), unquote_plus(password))):
            if login_ == client_id and password_ in secrets:
                return None
        return _REJECTED


_REJECTED = (401, "invalid_client", "Client authentication failed: unknown client or secret")


def check_methods(methods: Collection[str]) -> frozenset[str]:
    """``methods`` as a set; raise ``ValueError`` unless it is a non-empty subset of both."""
    chosen = frozenset([methods] if isinstance(methods, str) else methods)
    if not chosen or not chosen <= set(CLIENT_AUTH_METHODS):
        raise ValueError("client_auth_methods must be a non-empty collection of 'post', 'basic'")
    return chosen


def decode_basic_auth(header: str) -> tuple[str, str] | None:
    """``(login, password)`` from a ``Basic`` Authorization header, ``None`` if malformed."""
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        raw = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    login, colon, password = text.partition(":")
    return (login, password) if colon else None
