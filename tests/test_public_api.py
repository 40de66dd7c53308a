"""The public API never changes by accident: ``__all__`` is exactly what users may import."""

from __future__ import annotations

import inspect
import types

import aioamztoken
import aioamztoken as at

PUBLIC = [
    "AccountNotFoundError",
    "AccountState",
    "AccountStatus",
    "AdsApiMiddleware",
    "AdsApiTraceConfig",
    "AmzTokenError",
    "AsyncTokenManager",
    "BlockingTokenManager",
    "DecryptionError",
    "DirectoryTokenStore",
    "EncryptedFileTokenStore",
    "EventLoopError",
    "FileTokenStore",
    "InvalidClientError",
    "InvalidGrantError",
    "KeyringTokenStore",
    "ManagerClosedError",
    "MemoryTokenStore",
    "PostgresTokenStore",
    "RedactingFilter",
    "RedisTokenStore",
    "Region",
    "SQLiteTokenStore",
    "StorageError",
    "Token",
    "TokenEndpointError",
    "TokenRefreshError",
    "TokenStore",
    "__version__",
    "make_pkce_pair",
    "open_store",
    "pkce_challenge",
]


def test_all_is_exactly_the_public_api_and_sorted() -> None:
    assert aioamztoken.__all__ == PUBLIC
    assert sorted(aioamztoken.__all__) == aioamztoken.__all__


def test_every_public_name_resolves_and_nothing_else_is_public() -> None:
    for name in aioamztoken.__all__:
        assert getattr(aioamztoken, name) is not None
    stray = {
        name
        for name, value in vars(aioamztoken).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name not in aioamztoken.__all__
        and name != "annotations"
    }
    assert stray == set()


def test_the_error_tree() -> None:
    assert issubclass(at.AccountNotFoundError, at.AmzTokenError)
    assert issubclass(at.AccountNotFoundError, KeyError)
    assert issubclass(at.InvalidGrantError, at.TokenRefreshError)
    assert issubclass(at.InvalidClientError, at.TokenRefreshError)
    assert issubclass(at.TokenRefreshError, at.AmzTokenError)
    assert issubclass(at.TokenEndpointError, at.AmzTokenError)
    assert issubclass(at.DecryptionError, at.StorageError)
    assert issubclass(at.StorageError, at.AmzTokenError)


def test_contract_signatures() -> None:
    sig = inspect.signature(at.AsyncTokenManager)
    params = sig.parameters
    assert list(params)[:2] == ["client_id", "client_secret"]
    expected = {
        "store": inspect.Parameter.empty,
        "region": "na",
        "token_url": None,
        "refresh_buffer": 300.0,
        "auto_refresh": True,
        "session": None,
        "on_refresh": None,
        "max_concurrent_refreshes": 10,
    }
    for name, default in expected.items():
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
        assert params[name].default == default
    token = inspect.signature(at.Token)
    assert list(token.parameters)[:5] == [
        "access_token",
        "refresh_token",
        "expires_at",
        "token_type",
        "scope",
    ]
    assert token.parameters["token_type"].default == "bearer"
    assert all(p.default is not p.empty for p in list(token.parameters.values())[3:])
    url = inspect.signature(at.AsyncTokenManager.authorization_url).parameters
    assert url["scope"].default == "advertising::campaign_management"
    assert url["code_challenge"].default is None
    assert {r.value for r in at.Region} == {"na", "eu", "fe"}


def test_the_web_consent_app_contract() -> None:
    import aioamztoken.web as web

    assert web.__all__ == ["SELLER_CENTRAL_URLS", "SETTINGS", "ConsentSettings", "consent_app"]
    params = inspect.signature(web.consent_app).parameters
    assert next(iter(params)) == "manager"
    expected = {
        "redirect_uri": inspect.Parameter.empty,
        "api": "ads",
        "scope": None,
        "success_url": None,
        "state_ttl": 600,
        "operator": None,
        "application_id": None,
    }
    for name, default in expected.items():
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
        assert params[name].default == default
