"""Authorization age: when an account's grant must be renewed, and telling so once.

Amazon requires a seller to re-authorize a public SP-API application every 365 days;
a lapsed authorization shows up as ``invalid_grant`` on the next refresh. The manager
knows when each grant was made (:attr:`Token.authorized_at`); with an
``authorization_max_age`` it can say when the account is due, and warn ahead of time.
"""

from __future__ import annotations

import math
import time

from ._models import Token

__all__ = ["DEFAULT_REAUTH_WARNING", "ReauthWatch", "check_authorized_at"]

#: How long before an authorization's end the ``on_reauth_due`` hook runs: 30 days.
DEFAULT_REAUTH_WARNING = 30 * 86400.0


def check_authorized_at(value: float | None) -> float:
    """``value`` as POSIX seconds (``None``: now); raise ``ValueError`` for a bad one."""
    if value is None:
        return time.time()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("authorized_at must be POSIX seconds (an int or a float) or None")
    if not math.isfinite(value) or value < 0:
        raise ValueError("authorized_at must be a finite, non-negative number of seconds")
    return float(value)


class ReauthWatch:
    """Computes each account's re-authorization date and decides when to warn.

    ``max_age`` (seconds, or ``None``: no limit known) is how long a grant lasts;
    ``warning`` (seconds) how long before its end :meth:`due_to_warn` says so. It says
    so once per account and authorization: a new grant (a later ``authorized_at``)
    can be warned about again. Not thread-safe (one event loop).
    """

    __slots__ = ("_warned", "max_age", "warning")

    def __init__(self, max_age: float | None, warning: float) -> None:
        if max_age is not None and (
            isinstance(max_age, bool) or not math.isfinite(max_age) or max_age <= 0
        ):
            raise ValueError("authorization_max_age must be a positive number of seconds or None")
        if isinstance(warning, bool) or not math.isfinite(warning) or warning < 0:
            raise ValueError("reauth_warning must be a non-negative number of seconds")
        self.max_age = None if max_age is None else float(max_age)
        self.warning = float(warning)
        self._warned: dict[str, float] = {}

    def due_at(self, token: Token | None) -> float | None:
        """``token.authorized_at + max_age``, or ``None`` when either is unknown."""
        if token is None or token.authorized_at is None or self.max_age is None:
            return None
        return token.authorized_at + self.max_age

    def due_to_warn(self, account_id: str, token: Token, now: float | None = None) -> float | None:
        """The re-authorization date if it is within ``warning`` and not yet warned about."""
        due = self.due_at(token)
        if due is None or self._warned.get(account_id) == due:
            return None
        if (time.time() if now is None else now) < due - self.warning:
            return None
        self._warned[account_id] = due
        return due

    def forget(self, account_id: str) -> None:
        """Drop what is remembered of ``account_id`` (it was removed)."""
        self._warned.pop(account_id, None)
