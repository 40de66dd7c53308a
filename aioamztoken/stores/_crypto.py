"""Authenticated encryption of stored data: :class:`TokenCipher`.

The format (version 1) of an encrypted blob, every byte of it authenticated::

    offset  size  field
    0       4     magic b"aztk"
    4       1     format version, 0x01
    5       8     key id: which key wrote it (HKDF of the key; says nothing about the key)
    13      12    nonce, random for every blob
    25      n+16  AES-256-GCM ciphertext of the n plaintext bytes, then its 16-byte tag

The first 25 bytes (the header) are the associated data of the encryption, so a changed
header fails like a changed ciphertext. A key is 32 random bytes written as 43 URL-safe
base64 characters; the AES key, the key id and the key of :meth:`TokenCipher.keyed_hash`
are derived from it with HKDF-SHA256 under distinct labels. Random 96-bit nonces keep
AES-GCM safe for far more than the 2**32 blobs per key its bound allows a token store.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .._errors import DecryptionError
from ._codec import corrupt

__all__ = ["TokenCipher"]

_MAGIC = b"aztk"
_VERSION = 1
_KEY_ID_SIZE = 8
_NONCE_SIZE = 12
_TAG_SIZE = 16
_HEADER_SIZE = len(_MAGIC) + 1 + _KEY_ID_SIZE + _NONCE_SIZE
_KEY_SIZE = 32
_KEY_CHARS = 43  # base64 of 32 bytes, without the "=" padding


def _derive(secret: bytes, label: bytes, size: int) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=size, salt=None, info=b"aioamztoken/1 " + label)
    return hkdf.derive(secret)


class _Key:
    __slots__ = ("aead", "key_id", "naming")

    def __init__(self, secret: bytes) -> None:
        self.aead = AESGCM(_derive(secret, b"encryption", _KEY_SIZE))
        self.key_id = _derive(secret, b"key id", _KEY_ID_SIZE)
        self.naming = _derive(secret, b"names", _KEY_SIZE)


def _parse_key(key: object, number: int, count: int) -> bytes:
    # Messages never quote the key: a near miss is still most of a secret.
    which = "the key" if count == 1 else f"key #{number} (of {count})"
    if not isinstance(key, str):
        raise TypeError(f"{which} must be a str, not {type(key).__name__}")
    text = key.strip().rstrip("=")
    try:
        secret = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        secret = b""
    if len(secret) != _KEY_SIZE:
        raise ValueError(
            f"{which} is not an aioamztoken key: expected {_KEY_CHARS} URL-safe base64 "
            "characters (32 random bytes), as TokenCipher.generate_key() makes"
        )
    return secret


class TokenCipher:
    """Encrypts and authenticates blobs with AES-256-GCM under a list of keys.

    ``key`` is one key, a string of keys separated by commas (as an environment variable
    holds them), or a sequence of keys: the first encrypts, every one decrypts, so
    that keys can be rotated (``[new, old]`` reads what ``old`` wrote, and a rewrite puts
    it under ``new``). Keys come from :meth:`generate_key`; a malformed one raises
    ``ValueError`` (``TypeError`` if not a ``str``), whose message never shows it.

    A blob cannot be read without its key, and a change to any byte of it is detected:
    :meth:`decrypt` raises :class:`~aioamztoken.DecryptionError`. To bind a blob to its
    place (a file, a key in Redis), put the place in the plaintext and check it on reading.

    Stateless after construction: safe to share between threads and tasks. Encrypting or
    decrypting a few kilobytes takes microseconds.
    """

    __slots__ = ("_keys",)

    def __init__(self, key: str | Sequence[str]) -> None:
        keys: Sequence[object] = key.split(",") if isinstance(key, str) else key
        if isinstance(keys, (bytes, bytearray)) or not isinstance(keys, Sequence):
            raise TypeError("key must be a str, or a sequence of str (first writes, all read)")
        if not keys:
            raise ValueError("at least one key is needed")
        self._keys = [_Key(_parse_key(k, n, len(keys))) for n, k in enumerate(keys, 1)]

    def __repr__(self) -> str:
        count = len(self._keys)
        return f"{type(self).__name__}(<{count} key{'s' if count > 1 else ''}>)"

    @staticmethod
    def generate_key() -> str:
        """A new random key: 43 URL-safe base64 characters. Keep it out of the store's reach."""
        return base64.urlsafe_b64encode(os.urandom(_KEY_SIZE)).decode("ascii").rstrip("=")

    def encrypt(self, plaintext: bytes) -> bytes:
        """``plaintext`` encrypted and authenticated under the first key (41 bytes longer)."""
        key = self._keys[0]
        header = _MAGIC + bytes([_VERSION]) + key.key_id + os.urandom(_NONCE_SIZE)
        return header + key.aead.encrypt(header[-_NONCE_SIZE:], plaintext, header)

    def decrypt(self, blob: bytes, *, location: str) -> tuple[bytes, bool]:
        """The plaintext of ``blob``, and whether it was written under a key other than the first.

        Raises :class:`~aioamztoken.DecryptionError` naming ``location`` if ``blob`` was not
        made by :meth:`encrypt`, was written under a key not given, or was altered.
        """
        if len(blob) < _HEADER_SIZE + _TAG_SIZE or not blob.startswith(_MAGIC):
            raise _refused(location, "is not data encrypted by aioamztoken")
        if blob[len(_MAGIC)] != _VERSION:
            raise _refused(
                location,
                f"is in encryption format {blob[len(_MAGIC)]}, which this version of "
                "aioamztoken cannot read",
            )
        header = blob[:_HEADER_SIZE]
        key_id = header[len(_MAGIC) + 1 : len(_MAGIC) + 1 + _KEY_ID_SIZE]
        for index, key in enumerate(self._keys):
            if hmac.compare_digest(key.key_id, key_id):
                try:
                    plaintext = key.aead.decrypt(header[-_NONCE_SIZE:], blob[_HEADER_SIZE:], header)
                except InvalidTag:
                    break
                return plaintext, index > 0
        raise _refused(
            location,
            "cannot be decrypted with the key(s) given: it was written under another key, "
            "or altered",
        )

    def keyed_hash(self, data: bytes) -> str:
        """A hex HMAC-SHA256 of ``data`` under the first key: a stable name for ``data``
        that tells nothing about it to anyone without the key."""
        return hmac.new(self._keys[0].naming, data, hashlib.sha256).hexdigest()

    def keyed_hashes(self, data: bytes) -> list[str]:
        """:meth:`keyed_hash` of ``data`` under every key, in the order the keys were given."""
        return [hmac.new(k.naming, data, hashlib.sha256).hexdigest() for k in self._keys]


def _refused(location: str, problem: str) -> DecryptionError:
    return corrupt(location, problem, error=DecryptionError)
