"""A file store whose one file is encrypted and authenticated."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from .._models import Token
from ._base import validate_account_id
from ._codec import decode_file, encode_file
from ._crypto import TokenCipher
from ._file import FileTokenStore
from ._fs import DEFAULT_MAX_FILE_SIZE

__all__ = ["EncryptedFileTokenStore"]


class EncryptedFileTokenStore(FileTokenStore):
    """A :class:`FileTokenStore` whose file is encrypted: nothing in it is readable on disk.

    The whole document (account ids, access and refresh tokens) is encrypted and
    authenticated with AES-256-GCM by a :class:`~aioamztoken.stores.TokenCipher`; the file
    (mode 0600) holds only that blob. The key is never written anywhere by the store.

    ``key`` is one key, a list of keys or a string of keys separated by commas, each made
    by :meth:`generate_key`: the first encrypts, every one decrypts. To rotate, pass
    ``[new, old]`` (or ``"new,old"``): what ``old`` wrote is read, and the next save
    rewrites the whole file under ``new``, after which ``old`` may be dropped. A
    malformed key raises ``ValueError`` (its message never shows it).

    Where the key comes from is up to the application:

    - explicitly: ``EncryptedFileTokenStore(path, key=key)``;
    - the environment: ``key=os.environ["AIOAMZTOKEN_KEY"]``; this is what
      ``open_store("encrypted-file:///path")`` and the command line do (choose another
      variable with ``?key_env=NAME``; a comma separates keys for rotation);
    - the OS keyring: ``key=keyring.get_password("myapp", "encryption-key")``;
      ``open_store("encrypted-file:///path?key_keyring=myapp")`` reads the
      ``encryption-key`` entry of the ``myapp`` service.

    A file that cannot be decrypted (a wrong key, any byte changed, not an encrypted
    file) makes every method raise :class:`~aioamztoken.DecryptionError`, a
    :class:`~aioamztoken.StorageError` naming the file, and the file is never overwritten
    or deleted. Locks, batched writes, atomic replacement and crash safety are those of
    :class:`FileTokenStore`; the lock files in ``.<name>.locks/`` are named by a keyed
    hash of the account id, so their names reveal no id. ``lock(account_id)`` holds one
    lock file per key (taken in sorted order), so processes midway through a rotation
    (``[new, old]`` here, ``[old, new]`` or ``[old]`` there) still exclude each other:
    the order of the keys does not matter. Marking an account as needing
    re-authorization compares the stored refresh token under the file's lock first.

    Cost: a :class:`FileTokenStore`'s, plus microseconds to encrypt or decrypt the file.
    Safe to share between tasks on one event loop and between processes; not thread-safe.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        key: str | Sequence[str],
        max_file_size: int = DEFAULT_MAX_FILE_SIZE,
    ) -> None:
        self._cipher = TokenCipher(key)
        super().__init__(path, max_file_size=max_file_size)

    @staticmethod
    def generate_key() -> str:
        """A new random key (43 URL-safe base64 characters): keep it away from the file."""
        return TokenCipher.generate_key()

    def _encode(self, accounts: Mapping[str, Token]) -> bytes:
        return self._cipher.encrypt(encode_file(accounts))

    def _decode(self, data: bytes, location: str) -> tuple[dict[str, Token], bool]:
        plaintext, outdated = self._cipher.decrypt(data, location=location)
        return decode_file(plaintext, location), outdated

    def _lock_names(self, account_id: str) -> list[str]:
        # One lock per key, held together: processes midway through a rotation, whatever
        # order they list the keys in, share at least one of them, so they still exclude
        # each other; a lock named under the first key only would differ between them.
        data = validate_account_id(account_id).encode("utf-8")
        return sorted(f"account-{digest}" for digest in self._cipher.keyed_hashes(data))
