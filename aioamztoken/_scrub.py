"""Stand-ins for third-party errors in exception chains: their type, never their contents.

Error reporters (Sentry and the like) walk ``__cause__`` and ``__context__`` and record
each error's ``args`` and attributes. A third-party error may carry what it was sent (an
aiohttp error the form with ``client_secret``, a ``JSONDecodeError`` the whole token
file), so the library raises its own errors outside the ``except`` block that caught
theirs, with a :class:`ScrubbedError` as the cause.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NoReturn

from ._logging import redact

__all__ = ["ScrubbedError", "raise_without_context", "scrubbed"]

_MAX_MESSAGE = 200


class ScrubbedError(Exception):
    """Stands in for an error that was dropped because it may carry secrets.

    ``type_name`` is the dropped error's qualified class name; the message is that
    name and the error's text, redacted and clipped to 200 characters.
    """

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(message)
        self.type_name = type_name


def scrubbed(
    exc: BaseException, secrets: Iterable[str] = (), *, text: bool = True
) -> ScrubbedError:
    """A :class:`ScrubbedError` naming ``exc``: its type, and (if ``text``) its message with
    anything secret-shaped and each of ``secrets`` redacted. Raise it as the cause."""
    kind = type(exc)
    type_name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else (f"{kind.__module__}.{kind.__qualname__}")
    )
    detail = ""
    if text:
        try:
            detail = redact(" ".join(str(exc).split()), secrets)
        except Exception:  # a __str__ that fails: the type alone is enough
            detail = ""
        if len(detail) > _MAX_MESSAGE:
            detail = detail[: _MAX_MESSAGE - 1] + "…"
    return ScrubbedError(type_name, f"{type_name}: {detail}" if detail else type_name)


def raise_without_context(error: BaseException) -> NoReturn:
    """Raise ``error`` with no ``__context__``, even from an ``except`` block or a context
    manager's exit (where the interpreter would link the error being handled)."""
    try:
        raise error
    except BaseException as raised:
        raised.__context__ = None
        raise
