"""A keyring backend for subprocess tests that must run code written for a real OS keyring.

keyrings.alt's ``PlaintextKeyring`` is refused by :class:`aioamztoken.KeyringTokenStore`
unless a caller opts in, and the docs' examples (written for users, who have an OS
keyring) do not opt in. Children of the docs tests select this backend with
``PYTHON_KEYRING_BACKEND=tests._keyrings.FileKeyringForTests``: the same file, in the
child's private ``XDG_DATA_HOME``, with the priority of a recommended backend, so the
example runs unchanged. Never use it outside tests.
"""

from __future__ import annotations

from keyrings.alt.file import PlaintextKeyring


class FileKeyringForTests(PlaintextKeyring):  # type: ignore[misc]
    """keyrings.alt's file keyring, ranked as a recommended backend (priority 1)."""

    priority = 1  # type: ignore[assignment]
