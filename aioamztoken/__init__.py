"""aioamztoken: keep Amazon Ads API (Login with Amazon) tokens valid for asyncio code.

One :class:`AsyncTokenManager` per application, many accounts, pluggable async stores
and an aiohttp middleware.
"""

from __future__ import annotations

from ._blocking import BlockingTokenManager
from ._errors import (
    AccountNotFoundError,
    AmzTokenError,
    DecryptionError,
    EventLoopError,
    InvalidClientError,
    InvalidGrantError,
    ManagerClosedError,
    StorageError,
    TokenEndpointError,
    TokenRefreshError,
)
from ._logging import RedactingFilter
from ._lwa import make_pkce_pair, pkce_challenge
from ._manager import AsyncTokenManager
from ._middleware import AdsApiMiddleware, AdsApiTraceConfig
from ._models import AccountState, AccountStatus, Region, Token
from .stores import (
    DirectoryTokenStore,
    EncryptedFileTokenStore,
    FileTokenStore,
    KeyringTokenStore,
    MemoryTokenStore,
    PostgresTokenStore,
    RedisTokenStore,
    SQLiteTokenStore,
    TokenStore,
    open_store,
)

__version__ = "0.1.0"

__all__ = [
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
