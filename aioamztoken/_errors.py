"""The exception tree of aioamztoken.

::

    AmzTokenError
    ├── AccountNotFoundError (also KeyError)
    ├── TokenRefreshError            the endpoint said no: .error, .description, .status
    │   ├── InvalidGrantError        re-authorize the account
    │   └── InvalidClientError       fix the client id/secret
    ├── TokenEndpointError           transient failure that outlasted the retries (.status)
    └── StorageError                 names the file/key; never discards what it cannot read
        └── DecryptionError          wrong key or tampered data

No aiohttp or redis exception escapes the library: each is mapped here with
``raise ... from exc``. No message ever contains a secret.
"""

from __future__ import annotations

__all__ = [
    "AccountNotFoundError",
    "AmzTokenError",
    "DecryptionError",
    "EventLoopError",
    "InvalidClientError",
    "InvalidGrantError",
    "ManagerClosedError",
    "StorageError",
    "TokenEndpointError",
    "TokenRefreshError",
]


class AmzTokenError(Exception):
    """Base class of every error raised by aioamztoken."""


class AccountNotFoundError(AmzTokenError, KeyError):
    """The account is not in the store: add it with ``add_account`` or ``exchange_code``."""

    def __init__(self, account_id: str) -> None:
        super().__init__(account_id)
        self.account_id = account_id

    def __str__(self) -> str:
        return f"unknown account {self.account_id!r}: add it with add_account() or exchange_code()"


class TokenRefreshError(AmzTokenError):
    """The token endpoint refused the request (a 4xx answer). Retrying will not help.

    ``error`` is the OAuth2 error code (``invalid_grant``, ``invalid_request``...),
    ``description`` the server's ``error_description`` and ``status`` the HTTP status.
    """

    def __init__(
        self,
        message: str,
        *,
        error: str | None = None,
        description: str | None = None,
        status: int | None = None,
        account_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.error = error
        self.description = description
        self.status = status
        self.account_id = account_id
        self.attempts = 1


class InvalidGrantError(TokenRefreshError):
    """The refresh token (or authorization code) was revoked, expired or already used.

    The account needs re-authorization: run the consent flow again, or supply a new
    refresh token with ``add_account``.
    """


class InvalidClientError(TokenRefreshError):
    """The client id or client secret was rejected: fix the application's credentials.

    Raised only once every configured client secret has been rejected;
    ``secrets_tried`` says how many were.
    """

    secrets_tried: int = 1


class TokenEndpointError(AmzTokenError):
    """The token endpoint could not be reached or kept failing (5xx, 429, timeouts).

    Raised once the retry budget is spent. ``status`` is the last HTTP status seen, or
    ``None`` when the last attempt never got an answer (timeout, connection error).
    ``attempts`` is how many requests were made.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.attempts = attempts


class StorageError(AmzTokenError):
    """A store could not read or write. ``location`` names the file, key or URL involved.

    ``unavailable`` is true when the store itself did not answer (a connection that
    failed or timed out, a call that outlasted the refresh's deadline), as opposed to a
    problem with one account's data: refreshes queued behind such a failure then fail at
    once with it instead of each waiting to time out. Data that cannot be read is never
    overwritten or deleted.
    """

    def __init__(
        self, message: str, *, location: str | None = None, unavailable: bool = False
    ) -> None:
        super().__init__(message)
        self.location = location
        self.unavailable = unavailable


class DecryptionError(StorageError):
    """Encrypted data could not be decrypted: wrong key, or the data was tampered with."""


class ManagerClosedError(AmzTokenError, RuntimeError):
    """The manager was used after it was closed, or from an event loop it does not belong to."""


class EventLoopError(AmzTokenError, RuntimeError):
    """An ``AsyncTokenManager`` was used from an event loop other than its own, or a
    ``BlockingTokenManager`` was called from inside a running event loop."""
