"""A keyring backend for subprocess tests that run code written for a real OS keyring.

:class:`aioamztoken.KeyringTokenStore` refuses plaintext backends unless a caller opts in,
and the docs' examples (written for users, who have an OS keyring) do not opt in. Children
of the docs tests select this backend with
``PYTHON_KEYRING_BACKEND=tests._keyrings.FileKeyringForTests``: entries in a JSON file in
the child's private ``XDG_DATA_HOME``, with the priority of a recommended backend, so that
the example runs unchanged. Never use it outside tests: it keeps secrets in plain text.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from keyring.backend import KeyringBackend
from keyring.errors import PasswordDeleteError


class FileKeyringForTests(KeyringBackend):
    """Entries in ``$XDG_DATA_HOME/test-keyring.json``; ranked as recommended (priority 1)."""

    priority = 1  # type: ignore[assignment]

    @property
    def _path(self) -> Path:
        return Path(os.environ.get("XDG_DATA_HOME", "."), "test-keyring.json")

    def _load(self) -> dict[str, str]:
        try:
            data: dict[str, str] = json.loads(self._path.read_text())
        except FileNotFoundError:
            return {}
        return data

    def _dump(self, entries: dict[str, str]) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._path.write_text(json.dumps(entries))

    def get_password(self, service: str, username: str) -> str | None:
        return self._load().get(json.dumps([service, username]))

    def set_password(self, service: str, username: str, password: str) -> None:
        entries = self._load()
        entries[json.dumps([service, username])] = password
        self._dump(entries)

    def delete_password(self, service: str, username: str) -> None:
        entries = self._load()
        if entries.pop(json.dumps([service, username]), None) is None:
            raise PasswordDeleteError(username)
        self._dump(entries)
