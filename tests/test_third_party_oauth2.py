"""The code and refresh flows with ``client_auth="basic"`` against a third-party OAuth2
server: oauthlib's ``WebApplicationServer``, served on loopback by a small aiohttp app.

oauthlib runs the grants (code validation, PKCE, redirect URI, refresh) by RFC 6749;
its request validator below accepts client credentials only from an ``Authorization:
Basic`` header, form-decoded as section 2.3.1 says, and refuses any request carrying
them in the body, as a Basic-only server does.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

import pytest
from aiohttp import web

from aioamztoken import AsyncTokenManager, InvalidClientError, MemoryTokenStore, make_pkce_pair

oauth2 = pytest.importorskip("oauthlib.oauth2", reason="oauthlib is not installed")

CLIENT_ID = "amzn1.application-oa2-client.third party"
SECRET = "amzn1.oa2-cs.v1.a:b/c%d+e&f"  # reserved characters: the encoding matters
REDIRECT_URI = "http://127.0.0.1/callback"
SCOPE = "advertising::campaign_management"


@dataclass
class _Client:
    client_id: str


@dataclass
class Validator(oauth2.RequestValidator):  # type: ignore[misc]
    accepted: set[str] = field(default_factory=lambda: {SECRET})
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    refresh_tokens: dict[str, str] = field(default_factory=dict)
    access_tokens: dict[str, str] = field(default_factory=dict)
    basic_logins: list[tuple[str, str]] = field(default_factory=list)

    def client_authentication_required(self, request: Any, *args: Any, **kwargs: Any) -> bool:
        return True

    def authenticate_client(self, request: Any, *args: Any, **kwargs: Any) -> bool:
        if request.client_secret is not None or "client_secret" in (request.body or {}):
            return False  # credentials in the body: not accepted here
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            login, colon, password = (
                base64.b64decode(encoded, validate=True).decode().partition(":")
            )
        except (binascii.Error, UnicodeDecodeError):
            return False
        client_id, secret = unquote_plus(login), unquote_plus(password)
        self.basic_logins.append((client_id, secret))
        if not colon or client_id != CLIENT_ID or secret not in self.accepted:
            return False
        request.client = _Client(client_id)
        request.client_id = client_id
        return True

    def authenticate_client_id(self, client_id: str, request: Any, *a: Any, **k: Any) -> bool:
        return False  # a confidential client: no unauthenticated grants

    def validate_grant_type(self, client_id: str, grant_type: str, *a: Any, **k: Any) -> bool:
        return grant_type in ("authorization_code", "refresh_token")

    def validate_code(
        self, client_id: str, code: str, client: Any, request: Any, *a: Any, **k: Any
    ) -> bool:
        grant = self.codes.get(code)
        if grant is None or grant["client_id"] != client_id:
            return False
        request.user = grant["user"]
        request.scopes = [SCOPE]
        return True

    def get_code_challenge(self, code: str, request: Any) -> str | None:
        grant = self.codes.get(code)
        return None if grant is None else grant["challenge"]

    def get_code_challenge_method(self, code: str, request: Any) -> str:
        return "S256"

    def confirm_redirect_uri(
        self, client_id: str, code: str, redirect_uri: str, *a: Any, **k: Any
    ) -> bool:
        return bool(redirect_uri == self.codes[code]["redirect_uri"])

    def get_default_redirect_uri(self, client_id: str, request: Any, *a: Any, **k: Any) -> str:
        return REDIRECT_URI

    def invalidate_authorization_code(self, client_id: str, code: str, *a: Any, **k: Any) -> None:
        del self.codes[code]

    def save_bearer_token(self, token: dict[str, Any], request: Any, *a: Any, **k: Any) -> None:
        self.access_tokens[token["access_token"]] = request.user
        if "refresh_token" in token:
            self.refresh_tokens[token["refresh_token"]] = request.user

    def validate_refresh_token(
        self, refresh_token: str, client: Any, request: Any, *a: Any, **k: Any
    ) -> bool:
        user = self.refresh_tokens.get(refresh_token)
        if user is None:
            return False
        request.user = user
        return True

    def get_original_scopes(self, refresh_token: str, request: Any, *a: Any, **k: Any) -> list[str]:
        return [SCOPE]

    def rotate_refresh_token(self, request: Any) -> bool:
        return False  # as Amazon: the same refresh token comes back

    def is_pkce_required(self, client_id: str, request: Any) -> bool:
        return True

    def issue_code(self, user: str, challenge: str) -> str:
        code = secrets.token_urlsafe(16)
        self.codes[code] = {
            "client_id": CLIENT_ID,
            "user": user,
            "challenge": challenge,
            "redirect_uri": REDIRECT_URI,
        }
        return code


@dataclass
class Server:
    validator: Validator
    token_url: str
    statuses: list[int]


@pytest.fixture
async def server(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Server]:
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # plain http on loopback
    validator = Validator()
    endpoint = oauth2.WebApplicationServer(validator)
    statuses: list[int] = []

    async def token(request: web.Request) -> web.Response:
        body = await request.text()
        headers, answer, status = endpoint.create_token_response(
            str(request.url), http_method="POST", body=body, headers=dict(request.headers)
        )
        statuses.append(status)
        return web.Response(
            status=status,
            body=answer.encode(),
            headers={k: v for k, v in headers.items() if k.lower() != "content-length"},
        )

    app = web.Application()
    app.router.add_post("/token", token)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield Server(validator, f"http://{host}:{port}/token", statuses)
    finally:
        await runner.cleanup()


def manager(server: Server, secret: str | list[str], **options: Any) -> AsyncTokenManager:
    return AsyncTokenManager(
        CLIENT_ID,
        secret,
        store=MemoryTokenStore(),
        token_url=server.token_url,
        client_auth="basic",
        **options,
    )


async def test_code_and_refresh_flows_with_basic_auth_against_oauthlib(server: Server) -> None:
    verifier, challenge = make_pkce_pair()
    code = server.validator.issue_code("seller-1", challenge)
    async with manager(server, SECRET) as mgr:
        first = await mgr.exchange_code(
            "seller-1", code, redirect_uri=REDIRECT_URI, code_verifier=verifier
        )
        assert server.validator.access_tokens[first.access_token] == "seller-1"
        assert first.authorized_at is not None
        refreshed = await mgr.refresh("seller-1")
        assert refreshed.access_token != first.access_token
        assert refreshed.refresh_token == first.refresh_token
        assert refreshed.authorized_at == first.authorized_at
        assert server.validator.access_tokens[refreshed.access_token] == "seller-1"
        assert await mgr.get_access_token("seller-1") == refreshed.access_token
    assert server.statuses == [200, 200]
    assert server.validator.basic_logins == [(CLIENT_ID, SECRET)] * 2


async def test_the_same_server_refuses_post_client_auth(server: Server) -> None:
    verifier, challenge = make_pkce_pair()
    code = server.validator.issue_code("seller-1", challenge)
    async with AsyncTokenManager(
        CLIENT_ID, SECRET, store=MemoryTokenStore(), token_url=server.token_url
    ) as mgr:
        with pytest.raises(InvalidClientError):
            await mgr.exchange_code(
                "seller-1", code, redirect_uri=REDIRECT_URI, code_verifier=verifier
            )
    assert server.statuses == [401]
    assert code in server.validator.codes  # client authentication failed first


async def test_a_rotated_secret_against_oauthlib(server: Server) -> None:
    verifier, challenge = make_pkce_pair()
    code = server.validator.issue_code("seller-1", challenge)
    async with manager(server, ["amzn1.oa2-cs.v1.retired", SECRET]) as mgr:
        await mgr.exchange_code("seller-1", code, redirect_uri=REDIRECT_URI, code_verifier=verifier)
        await mgr.refresh("seller-1")
        assert server.statuses == [401, 200, 200]
        server.validator.accepted = {"amzn1.oa2-cs.v1.next"}
        mgr.set_client_secrets(["amzn1.oa2-cs.v1.next"])
        await mgr.refresh("seller-1")
    assert server.statuses == [401, 200, 200, 200]
