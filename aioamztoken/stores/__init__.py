"""Token stores: where tokens live between runs.

- :class:`MemoryTokenStore`: a dict, for tests and short-lived scripts.
- :class:`FileTokenStore`: every account in one JSON file, shared safely by processes.
- :class:`DirectoryTokenStore`: one JSON file per account, for many accounts.
- :class:`EncryptedFileTokenStore`: a :class:`FileTokenStore` whose file is encrypted.
- :class:`KeyringTokenStore`: the OS keyring, one entry per account (``[keyring]``).
- :class:`RedisTokenStore`: Redis, shared by every host, with a fleet-wide lock (``[redis]``);
  also Redis Cluster, Sentinel and Valkey.
- :class:`SQLiteTokenStore`: one SQLite file, for many accounts and processes on one host.
- :class:`PostgresTokenStore`: PostgreSQL, shared by a fleet, with advisory locks (``[postgres]``).

Any object with the four coroutines of :class:`TokenStore` is a store; one that also
has ``lock(account_id)`` (:class:`LockingTokenStore`) lets processes refresh once.
:func:`open_store` builds any store from a URL; :func:`migrate` copies between stores.
"""

from __future__ import annotations

from ._base import LockingTokenStore, TokenStore
from ._crypto import TokenCipher
from ._directory import DirectoryTokenStore
from ._encrypted import EncryptedFileTokenStore
from ._file import FileTokenStore
from ._keyring import KeyringTokenStore
from ._memory import MemoryTokenStore
from ._migrate import MigrationReport, migrate
from ._postgres import PostgresTokenStore
from ._redis import RedisTokenStore
from ._sqlite import SQLiteTokenStore
from ._url import open_store

__all__ = [
    "DirectoryTokenStore",
    "EncryptedFileTokenStore",
    "FileTokenStore",
    "KeyringTokenStore",
    "LockingTokenStore",
    "MemoryTokenStore",
    "MigrationReport",
    "PostgresTokenStore",
    "RedisTokenStore",
    "SQLiteTokenStore",
    "TokenCipher",
    "TokenStore",
    "migrate",
    "open_store",
]
