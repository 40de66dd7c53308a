"""Token stores: where tokens live between runs.

- :class:`MemoryTokenStore`: a dict, for tests and short-lived scripts.
- :class:`FileTokenStore`: every account in one JSON file, shared safely by processes.
- :class:`DirectoryTokenStore`: one JSON file per account, for many accounts.

Any object with the four coroutines of :class:`TokenStore` is a store; one that also
has ``lock(account_id)`` (:class:`LockingTokenStore`) lets processes refresh once.
"""

from __future__ import annotations

from ._base import LockingTokenStore, TokenStore
from ._directory import DirectoryTokenStore
from ._file import FileTokenStore
from ._memory import MemoryTokenStore

__all__ = [
    "DirectoryTokenStore",
    "FileTokenStore",
    "LockingTokenStore",
    "MemoryTokenStore",
    "TokenStore",
]
