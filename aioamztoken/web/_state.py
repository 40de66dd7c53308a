"""The ``state`` of a consent round trip, sealed so that any process of the app can check it.

A state is the authenticated encryption (AES-256-GCM) of what the callback needs: the
account it is bound to, the PKCE verifier (Ads API), when it was issued and when it
expires, and a random id. Nothing is kept on the server between ``/connect`` and
``/callback``, so the callback may reach another worker, host or restart of the app:
every process holding the same key opens it. The key is derived with HKDF-SHA256 from
the key material the app is configured with (by default the LwA client secret, which
every process of the app has and nobody else does), and the associated data binds a
state to one app: its client id, API and redirect URI.

Wire format: ``"s1."`` then URL-safe base64 (no padding) of a 12-byte random nonce and
the ciphertext with its 16-byte tag. About 300 characters.

One use: a state is spent in the process that receives it (a bounded in-memory set, up
to :data:`MAX_SPENT` ids, each forgotten once expired) and, across processes, when the
account's stored authorization is younger than the state (``Token.authorized_at``).
Amazon's authorization codes work once as well.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["MAX_SPENT", "PendingConsent", "StateError", "StateSealer"]

_PREFIX = "s1."
_NONCE_SIZE = 12
#: States longer than this are refused before any decoding (a bound on work per request).
MAX_STATE_CHARS = 2048
#: How many spent state ids one process remembers (the oldest are dropped first).
MAX_SPENT = 100_000


class StateError(Exception):
    """A state that cannot be used; ``reason`` is one of ``missing``, ``invalid``,
    ``expired`` or ``reused``. The message is safe to show (it holds no secret)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class PendingConsent:
    """What a sealed state carries. Holds the PKCE verifier: never log it."""

    state_id: str
    account_id: str | None
    code_verifier: str | None
    issued_at: float
    expires_at: float

    def __repr__(self) -> str:
        return f"<PendingConsent account_id={self.account_id!r} expires_at={self.expires_at:.0f}>"


class StateSealer:
    """Seals and opens states for one app. Safe to share between tasks on one event loop."""

    def __init__(self, key_material: bytes, *, binding: str, ttl: float) -> None:
        if not key_material:
            raise ValueError("the state key must not be empty")
        if not ttl > 0:
            raise ValueError("state_ttl must be a positive number of seconds")
        hkdf = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=b"aioamztoken consent state",
            info=b"aioamztoken/1 state",
        )
        self._aead = AESGCM(hkdf.derive(key_material))
        self._binding = binding.encode("utf-8")
        self.ttl = float(ttl)
        self._spent: OrderedDict[str, float] = OrderedDict()

    def __repr__(self) -> str:
        return f"<StateSealer ttl={self.ttl:g}s spent={len(self._spent)}>"

    def seal(self, account_id: str | None, code_verifier: str | None) -> str:
        """A fresh state bound to ``account_id`` (``None``: the callback names it)."""
        now = time.time()
        payload = {
            "n": secrets.token_urlsafe(16),
            "a": account_id,
            "v": code_verifier,
            "i": now,
            "e": now + self.ttl,
        }
        nonce = secrets.token_bytes(_NONCE_SIZE)
        sealed = self._aead.encrypt(nonce, json.dumps(payload).encode("utf-8"), self._binding)
        return _PREFIX + base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode("ascii")

    def open(self, state: str | None) -> PendingConsent:
        """The consent ``state`` stands for; raises :class:`StateError` if it cannot be used.

        Does not spend it: call :meth:`spend` once the callback is going to use it.
        """
        if not state:
            raise StateError(
                "missing", "The request carried no state, so it cannot be matched to a sign-in."
            )
        pending = self._decode(state)
        if time.time() >= pending.expires_at:
            raise StateError(
                "expired",
                f"This authorization link has expired (links work for {self.ttl:g} seconds).",
            )
        if pending.state_id in self._spent:
            raise StateError("reused", "This authorization link has already been used.")
        return pending

    def spend(self, pending: PendingConsent) -> None:
        """Remember ``pending`` as used, so that the same state is refused from now on."""
        now = time.time()
        while self._spent:
            oldest, expires_at = next(iter(self._spent.items()))
            if expires_at > now and len(self._spent) < MAX_SPENT:
                break
            del self._spent[oldest]
        self._spent[pending.state_id] = pending.expires_at

    def _decode(self, state: str) -> PendingConsent:
        invalid = StateError(
            "invalid",
            "The state does not match any sign-in this application started "
            "(it was changed, forged, or made by another application).",
        )
        if len(state) > MAX_STATE_CHARS or not state.startswith(_PREFIX):
            raise invalid
        body = state[len(_PREFIX) :]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (binascii.Error, ValueError):
            raise invalid from None
        if len(raw) <= _NONCE_SIZE:
            raise invalid
        try:
            plain = self._aead.decrypt(raw[:_NONCE_SIZE], raw[_NONCE_SIZE:], self._binding)
        except InvalidTag:
            raise invalid from None
        data: Any = json.loads(plain)
        return PendingConsent(data["n"], data["a"], data["v"], data["i"], data["e"])
