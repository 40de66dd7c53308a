"""The value one account's record holds in a database store (Redis, SQLite, PostgreSQL).

A value is the JSON document a :class:`DirectoryTokenStore` file holds, encrypted with a
:class:`TokenCipher` when the store has a key. The document names its account, so a value
moved to another account's row is refused. Each store names the place (``location``) in
its errors; nothing here quotes a value.
"""

from __future__ import annotations

from .._models import Token
from ._codec import corrupt, decode_account, encode_account
from ._crypto import TokenCipher

__all__ = ["decode_value", "encode_value"]


def encode_value(cipher: TokenCipher | None, account_id: str, token: Token) -> bytes:
    """The stored form of ``token`` for ``account_id``, encrypted when ``cipher`` is given."""
    data = encode_account(account_id, token)
    return data if cipher is None else cipher.encrypt(data)


def decode_value(
    cipher: TokenCipher | None, account_id: str, value: bytes, location: str
) -> tuple[Token, bool]:
    """The token in ``value``, and whether it was encrypted under a key other than the newest.

    Raises StorageError naming ``location`` for a value that cannot be read, holds another
    account, or (DecryptionError) was encrypted under no key given.
    """
    outdated = False
    data = bytes(value)
    if cipher is not None:
        data, outdated = cipher.decrypt(data, location=location)
    stored_id, token = decode_account(data, location)
    if stored_id != account_id:  # copied from another row by hand
        raise corrupt(location, "holds another account than its row says")
    return token, outdated
