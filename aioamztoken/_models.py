"""Plain data: tokens, regions and account status. Secrets are kept out of every repr."""

from __future__ import annotations

import enum
import math
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["AccountState", "AccountStatus", "Region", "Token"]


class Region(str, enum.Enum):
    """An Amazon Ads region: ``"na"``, ``"eu"`` or ``"fe"``.

    Each knows its Login with Amazon token URL, its consent (authorization) URL and its
    Ads API host. Tokens from any region's endpoint work in every region. Immutable: safe
    to share between tasks and threads.
    """

    NA = "na"
    EU = "eu"
    FE = "fe"

    @property
    def token_url(self) -> str:
        """The LwA token endpoint of this region."""
        return _REGION_URLS[self][0]

    @property
    def authorization_url(self) -> str:
        """The consent page the user is sent to in the authorization code flow."""
        return _REGION_URLS[self][1]

    @property
    def api_host(self) -> str:
        """The Ads API origin of this region, e.g. ``https://advertising-api.amazon.com``."""
        return _REGION_URLS[self][2]

    @classmethod
    def parse(cls, value: Region | str) -> Region:
        """Return the region named by ``value`` (case-insensitive); raise ``ValueError`` if none."""
        if isinstance(value, Region):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            names = ", ".join(repr(r.value) for r in cls)
            raise ValueError(f"unknown region {value!r}: expected one of {names}") from None

    def __str__(self) -> str:
        return self.value


_REGION_URLS: dict[Region, tuple[str, str, str]] = {
    Region.NA: (
        "https://api.amazon.com/auth/o2/token",
        "https://www.amazon.com/ap/oa",
        "https://advertising-api.amazon.com",
    ),
    Region.EU: (
        "https://api.amazon.co.uk/auth/o2/token",
        "https://eu.account.amazon.com/ap/oa",
        "https://advertising-api-eu.amazon.com",
    ),
    Region.FE: (
        "https://api.amazon.co.jp/auth/o2/token",
        "https://apac.account.amazon.com/ap/oa",
        "https://advertising-api-fe.amazon.com",
    ),
}

#: The Ads API origins the middleware sends tokens to by default (sandbox included).
ADS_API_ORIGINS: tuple[str, ...] = (
    "https://advertising-api.amazon.com",
    "https://advertising-api-eu.amazon.com",
    "https://advertising-api-fe.amazon.com",
    "https://advertising-api-test.amazon.com",
)


@dataclass(frozen=True, slots=True)
class Token:
    """An access token with the refresh token that renews it.

    ``expires_at`` is wall-clock POSIX seconds. ``repr()`` and ``str()`` never show
    either token. A token whose ``access_token`` is empty has never been fetched
    (``add_account`` stores one like that) and is refreshed on first use. Immutable (a
    frozen dataclass): safe to share between tasks and threads.
    """

    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    expires_at: float
    token_type: str = "bearer"
    scope: str | None = None
    issued_at: float | None = None
    """When the request that obtained it was sent (POSIX seconds), if known: with
    ``expires_at`` it gives the token's lifetime, which paces its background refresh."""
    needs_reauth: bool = False
    """The token endpoint rejected ``refresh_token`` (``invalid_grant``): kept in the store
    so that every process, and ``aioamztoken accounts``, knows the account needs
    re-authorization."""
    authorized_at: float | None = None
    """When the grant behind ``refresh_token`` was made (POSIX seconds), if known: set by
    ``exchange_code`` and ``add_account`` and carried over by every refresh. Amazon
    requires public SP-API apps to be re-authorized by the seller every 365 days."""

    def expires_in(self, now: float | None = None) -> float:
        """Seconds until expiry (negative once expired)."""
        return self.expires_at - (time.time() if now is None else now)

    def is_expired(self, margin: float = 0.0, now: float | None = None) -> bool:
        """True when fewer than ``margin`` seconds are left, or no usable access token is held."""
        return not self.access_token or self.needs_reauth or self.expires_in(now) <= margin

    @property
    def lifetime(self) -> float | None:
        """Seconds from issue to expiry, when ``issued_at`` is known."""
        if self.issued_at is None:
            return None
        return self.expires_at - self.issued_at

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form the stores persist (it holds secrets: keep it private)."""
        record: dict[str, Any] = {
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "expires_at": self.expires_at,
            "token_type": self.token_type,
            "scope": self.scope,
        }
        if self.issued_at is not None:
            record["issued_at"] = self.issued_at
        if self.needs_reauth:
            record["needs_reauth"] = True
        if self.authorized_at is not None:
            record["authorized_at"] = self.authorized_at
        return record

    @classmethod
    def from_dict(cls, data: Any) -> Token:
        """Build a token from :meth:`to_dict` output; raise ``ValueError`` on anything else."""
        if not isinstance(data, dict):
            raise ValueError("a token record must be a JSON object")
        access = data.get("access_token")
        refresh = data.get("refresh_token")
        expires_at = data.get("expires_at")
        token_type = data.get("token_type", "bearer")
        scope = data.get("scope")
        if not isinstance(access, str) or not isinstance(refresh, str) or not refresh:
            raise ValueError("a token record needs string access_token and refresh_token")
        if isinstance(expires_at, bool) or not isinstance(expires_at, (int, float)):
            raise ValueError("a token record needs a numeric expires_at")
        if expires_at != expires_at or expires_at in (float("inf"), float("-inf")):
            raise ValueError("a token record needs a finite expires_at")
        if not isinstance(token_type, str) or not (scope is None or isinstance(scope, str)):
            raise ValueError("token_type and scope must be strings")
        issued_at = data.get("issued_at")
        if issued_at is not None and (
            isinstance(issued_at, bool)
            or not isinstance(issued_at, (int, float))
            or not math.isfinite(issued_at)
        ):
            raise ValueError("issued_at must be a finite number when present")
        needs_reauth = data.get("needs_reauth", False)
        if not isinstance(needs_reauth, bool):
            raise ValueError("needs_reauth must be a boolean when present")
        authorized_at = data.get("authorized_at")
        if authorized_at is not None and (
            isinstance(authorized_at, bool)
            or not isinstance(authorized_at, (int, float))
            or not math.isfinite(authorized_at)
        ):
            raise ValueError("authorized_at must be a finite number when present")
        return cls(
            access,
            refresh,
            float(expires_at),
            token_type,
            scope,
            None if issued_at is None else float(issued_at),
            needs_reauth,
            None if authorized_at is None else float(authorized_at),
        )


class AccountState(str, enum.Enum):
    """Where an account's token stands. Immutable: safe to share between tasks and threads."""

    FRESH = "fresh"
    """Valid and outside the refresh buffer."""
    DUE = "due"
    """Valid, inside the refresh buffer: served at once, refreshed in the background."""
    EXPIRED = "expired"
    """Expired, or never fetched: the next caller waits for a refresh."""
    NEEDS_REAUTH = "needs-reauth"
    """The refresh token was rejected (``invalid_grant``): authorize the account again."""

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class AccountStatus:
    """What :meth:`AsyncTokenManager.status` reports for one account, at one moment.

    Immutable (a frozen dataclass): safe to share between tasks and threads.
    """

    account_id: str
    state: AccountState
    expires_at: float | None
    """Wall-clock POSIX seconds, or ``None`` when no access token has been fetched."""
    refreshing: bool = False
    """A refresh is in flight right now."""
    last_error: str | None = None
    """The type and message of the last failed refresh, if the last attempt failed."""
    authorized_at: float | None = None
    """When the grant behind the account's refresh token was made (POSIX seconds), if known."""
    reauth_due_at: float | None = None
    """``authorized_at + authorization_max_age``: when the account must be authorized again,
    or ``None`` when either is unknown."""

    @property
    def expires_in(self) -> float | None:
        """Seconds until expiry, or ``None``."""
        return None if self.expires_at is None else self.expires_at - time.time()
