"""Store URLs: :func:`open_store` builds any store from one string (a setting, a CLI argument)."""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

from .._errors import StorageError
from .._scrub import scrubbed
from ._base import TokenStore
from ._directory import DirectoryTokenStore
from ._encrypted import EncryptedFileTokenStore
from ._file import FileTokenStore
from ._memory import MemoryTokenStore

__all__ = ["DEFAULT_KEY_ENV", "KEYRING_KEY_ENTRY", "SCHEMES", "display_url", "open_store"]

#: The environment variable holding the key(s) of an ``encrypted-file:`` URL by default.
DEFAULT_KEY_ENV = "AIOAMZTOKEN_KEY"
#: The keyring entry (user name) holding the key(s) named by ``?key_keyring=SERVICE``.
KEYRING_KEY_ENTRY = "encryption-key"

_KEY_PARAMS = ("key_env", "key_keyring")
_SECRET_PARAMS = frozenset({"password", "key", "secret", "token"})


def open_store(url: str) -> TokenStore:
    """The store that ``url`` names. Raises ``ValueError`` for a URL that names none.

    ===============================================  =======================================
    ``memory://``                                    :class:`MemoryTokenStore`
    ``file:///abs/tokens.json``                      :class:`FileTokenStore`
    ``dir:///abs/tokens``                            :class:`DirectoryTokenStore`
    ``encrypted-file:///abs/tokens.enc``             :class:`EncryptedFileTokenStore`
    ``keyring://SERVICE``                            :class:`KeyringTokenStore` (``keyring://``
                                                     alone: service ``"aioamztoken"``;
                                                     ``?allow_insecure_backend=1`` opts in
                                                     to a plaintext backend)
    ``redis://[:PASSWORD@]HOST[:PORT][/DB]``         :class:`RedisTokenStore`; ``rediss://``
                                                     for TLS
    ``redis+cluster://HOST:PORT[,HOST:PORT]/``       :class:`RedisTokenStore` on a Redis
                                                     Cluster (``rediss+cluster://``: TLS)
    ``redis+sentinel://HOST:PORT[,...]/SERVICE``     :class:`RedisTokenStore` on the master
                                                     Sentinel names (``[/DB]`` after it)
    ``sqlite:///abs/tokens.db``                      :class:`SQLiteTokenStore`
                                                     (``sqlite:relative/tokens.db`` too)
    ``postgresql://USER[:PASSWORD]@HOST[:PORT]/DB``  :class:`PostgresTokenStore`
                                                     (``postgres://`` too)
    ===============================================  =======================================

    Paths: ``file:///abs/x.json`` (or ``file://localhost/abs/x.json``, ``file:/abs/x.json``)
    is absolute; ``file:~/x.json`` is in the home directory and ``file:x.json`` relative to
    the current directory (made absolute now). Paths are percent-decoded, so write a
    ``%``, ``?`` or ``#`` in a file name as ``%25``, ``%3F``, ``%23``
    (``pathlib.Path.as_uri()`` does it). A host other than ``localhost`` is refused.

    Keys: an ``encrypted-file:`` URL takes its key from the environment variable
    ``AIOAMZTOKEN_KEY``, or the one named by ``?key_env=NAME``, or from the
    ``encryption-key`` entry of the OS keyring service named by ``?key_keyring=SERVICE``
    (read now, in this thread); a comma separates several keys, newest first. A
    ``redis://`` URL is encrypted only when given ``?key_env=`` or ``?key_keyring=``. A
    key itself is never accepted in a URL: URLs end up in shell histories and logs.

    ``redis://``, ``sqlite:`` and ``postgresql://`` also take ``?namespace=NAME`` (and
    are encrypted only with ``?key_env=`` or ``?key_keyring=``). ``redis://`` also takes
    the store's bounds ``?timeout=``, ``?max_connections=`` and ``?lock_ttl=`` (see
    :class:`RedisTokenStore`). The other query parameters of ``redis://`` go to redis-py,
    those of ``postgresql://`` to asyncpg
    (``sslmode=``...). Unknown query parameters of the other schemes raise ``ValueError``. No
    error message shows a password or key from the URL.
    """
    if not isinstance(url, str):
        raise TypeError(f"a store URL must be a str, not {type(url).__name__}")
    scheme, sep, _ = url.partition(":")
    opener = _OPENERS.get(scheme.lower()) if sep else None
    if opener is None:
        raise ValueError(
            f"{display_url(url)!r} is not a store URL: it must start with one of "
            f"{', '.join(s + ':' for s in SCHEMES)} (for example file:///path/to/tokens.json)"
        )
    parts = urllib.parse.urlsplit(url)
    if parts.fragment:
        raise _bad(url, "has a #fragment, which no store uses (write # in a path as %23)")
    return opener(url, parts)


def display_url(url: str) -> str:
    """``url`` with any password, and any query parameter that may hold a secret, hidden."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<an unparsable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:***@{host}" if colon else f"{userinfo}@{host}"
    query = "&".join(
        f"{name}=***" if name.lower() in _SECRET_PARAMS else f"{name}={value}"
        for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    )
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))


# ---------------------------------------------------------------------------- the schemes


def _open_memory(url: str, parts: urllib.parse.SplitResult) -> TokenStore:
    if parts.netloc or parts.path not in ("", "/") or parts.query:
        raise _bad(url, "must be just memory:// (a memory store has no location)")
    return MemoryTokenStore()


def _open_file(url: str, parts: urllib.parse.SplitResult) -> TokenStore:
    _params(url, parts, ())
    return FileTokenStore(_path(url, parts))


def _open_dir(url: str, parts: urllib.parse.SplitResult) -> TokenStore:
    _params(url, parts, ())
    return DirectoryTokenStore(_path(url, parts))


def _open_encrypted_file(url: str, parts: urllib.parse.SplitResult) -> TokenStore:
    params = _params(url, parts, _KEY_PARAMS)
    path = _path(url, parts)
    key = _key(url, params, required=True)
    assert key is not None
    return EncryptedFileTokenStore(path, key=key)


def _open_keyring(url: str, parts: urllib.parse.SplitResult) -> TokenStore:
    from ._keyring import KeyringTokenStore

    params = _params(url, parts, ("allow_insecure_backend",))
    if parts.path not in ("", "/"):
        raise _bad(url, "has a path: write the keyring service as keyring://SERVICE")
    service = urllib.parse.unquote(parts.netloc, errors="strict") or "aioamztoken"
    insecure = params.get("allow_insecure_backend", "0").lower()
    if insecure not in ("0", "1", "true", "false", "yes", "no"):
        raise _bad(url, "has an allow_insecure_backend that is not 1 or 0")
    return KeyringTokenStore(service, allow_insecure_backend=insecure in ("1", "true", "yes"))


def _open_redis(url: str, parts: urllib.parse.SplitResult) -> TokenStore:
    from ._redis import RedisTokenStore

    options = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    names = [name for name, _ in options]
    if len(set(names)) != len(names):
        raise _bad(url, "repeats a query parameter")
    if "key" in names:
        raise _bad(url, _NO_KEY_IN_URL)
    ours = {
        name: value
        for name, value in options
        if name in ("namespace", *_KEY_PARAMS, *_REDIS_BOUNDS)
    }
    rest = urllib.parse.urlencode([(n, v) for n, v in options if n not in ours])
    redis_url = urllib.parse.urlunsplit(parts._replace(query=rest))
    key = _key(url, ours, required=False)
    # ?timeout=, ?max_connections= and ?lock_ttl= are the store's own bounds (timeout
    # covers each command, connecting and the wait for a pool connection), not only
    # redis-py's pool wait: otherwise ?timeout=1 left commands a 5 s socket timeout.
    bounds: dict[str, Any] = {}
    for name, convert in _REDIS_BOUNDS.items():
        if name in ours:
            try:
                bounds[name] = convert(ours[name])
            except ValueError:
                raise _bad(url, f"has an unusable {name}= (a number is expected)") from None
    namespace = ours.get("namespace")
    if namespace is not None:
        return RedisTokenStore(redis_url, namespace=namespace, key=key, **bounds)
    return RedisTokenStore(redis_url, key=key, **bounds)


_REDIS_BOUNDS: dict[str, Callable[[str], float | int]] = {
    "timeout": float,
    "lock_ttl": float,
    "max_connections": int,
}


def _open_sqlite(url: str, parts: urllib.parse.SplitResult) -> TokenStore:
    from ._sqlite import SQLiteTokenStore

    params = _params(url, parts, ("namespace", *_KEY_PARAMS))
    path = _path(url, parts)
    key = _key(url, params, required=False)
    if "namespace" in params:
        return SQLiteTokenStore(path, namespace=params["namespace"], key=key)
    return SQLiteTokenStore(path, key=key)


def _open_postgres(url: str, parts: urllib.parse.SplitResult) -> TokenStore:
    from ._postgres import PostgresTokenStore

    ours, dsn = _split_ours(url, parts)
    key = _key(url, ours, required=False)
    if "namespace" in ours:
        return PostgresTokenStore(dsn, namespace=ours["namespace"], key=key)
    return PostgresTokenStore(dsn, key=key)


def _split_ours(url: str, parts: urllib.parse.SplitResult) -> tuple[dict[str, str], str]:
    """Our query parameters (namespace, key sources), and the URL with the others only."""
    options = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    names = [name for name, _ in options]
    if len(set(names)) != len(names):
        raise _bad(url, "repeats a query parameter")
    if "key" in names:
        raise _bad(url, _NO_KEY_IN_URL)
    ours = {name: value for name, value in options if name in ("namespace", *_KEY_PARAMS)}
    rest = urllib.parse.urlencode([(n, v) for n, v in options if n not in ours])
    return ours, urllib.parse.urlunsplit(parts._replace(query=rest))


_OPENERS: dict[str, Callable[[str, urllib.parse.SplitResult], TokenStore]] = {
    "memory": _open_memory,
    "file": _open_file,
    "dir": _open_dir,
    "encrypted-file": _open_encrypted_file,
    "keyring": _open_keyring,
    "redis": _open_redis,
    "rediss": _open_redis,
    "redis+cluster": _open_redis,
    "rediss+cluster": _open_redis,
    "redis+sentinel": _open_redis,
    "rediss+sentinel": _open_redis,
    "sqlite": _open_sqlite,
    "postgresql": _open_postgres,
    "postgres": _open_postgres,
}

#: The URL schemes :func:`open_store` knows.
SCHEMES: tuple[str, ...] = tuple(_OPENERS)


# ---------------------------------------------------------------------------- the parts


def _bad(url: str, problem: str) -> ValueError:
    return ValueError(f"store URL {display_url(url)!r} {problem}")


def _path(url: str, parts: urllib.parse.SplitResult) -> str:
    if parts.netloc not in ("", "localhost"):
        raise _bad(
            url,
            f"names the host {parts.hostname!r}: files are local; write {parts.scheme}:///abs/path "
            f"(three slashes) or {parts.scheme}:relative/path",
        )
    try:
        path = urllib.parse.unquote(parts.path, errors="strict")
    except UnicodeDecodeError:
        raise _bad(url, "has a path that is not percent-encoded UTF-8") from None
    if not path or path == "/" or "\x00" in path:
        raise _bad(url, "names no file: write it as " + f"{parts.scheme}:///abs/path")
    return path


def _params(url: str, parts: urllib.parse.SplitResult, allowed: Sequence[str]) -> dict[str, str]:
    pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    params = dict(pairs)
    if len(params) != len(pairs):
        raise _bad(url, "repeats a query parameter")
    if "key" in params:
        raise _bad(url, _NO_KEY_IN_URL)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        known = ", ".join(allowed) if allowed else "none"
        raise _bad(url, f"has unknown query parameters {unknown} (known: {known})")
    return params


_NO_KEY_IN_URL = (
    "holds a key: a URL ends up in shell histories and logs, so pass the key in an "
    "environment variable (?key_env=NAME) or the OS keyring (?key_keyring=SERVICE)"
)


def _key(url: str, params: dict[str, str], *, required: bool) -> list[str] | None:
    env, service = params.get("key_env"), params.get("key_keyring")
    if env is not None and service is not None:
        raise _bad(url, "names two key sources: give key_env or key_keyring, not both")
    if service is not None:
        if not service:
            raise _bad(url, "has an empty key_keyring: name the keyring service")
        text = _keyring_key(service)
        source = f"the {KEYRING_KEY_ENTRY!r} entry of keyring service {service!r}"
    elif env is not None or required:
        name = env or DEFAULT_KEY_ENV
        text = os.environ.get(name)
        source = f"the environment variable {name}"
    else:
        return None
    keys = [k.strip() for k in (text or "").split(",") if k.strip()]
    if not keys:
        raise ValueError(
            f"store URL {display_url(url)!r} needs an encryption key in {source}, which is "
            "unset or empty. Make one with `python -c 'import aioamztoken as at; "
            "print(at.EncryptedFileTokenStore.generate_key())'`."
        )
    return keys


def _keyring_key(service: str) -> str | None:
    try:
        import keyring
    except ImportError as exc:
        raise ImportError(
            "?key_keyring= needs the keyring package: pip install 'aioamztoken[keyring]'"
        ) from exc
    where = f"keyring entry {KEYRING_KEY_ENTRY!r} of service {service!r}"
    try:
        value = keyring.get_password(service, KEYRING_KEY_ENTRY)
    except Exception as exc:  # any backend failure; its message may quote secrets
        failure = StorageError(
            f"the keyring could not read {where}: {type(exc).__name__}", location=where
        )
        failure.__cause__ = scrubbed(exc, text=False)
    else:
        return value if isinstance(value, str) else None
    raise failure
