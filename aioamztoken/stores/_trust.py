"""What the file stores refuse to trust: files and lock directories of another user, lock
paths that are symlinks. And token files others can read, used with a warning.

Processes that share a store run as one user. A store file or lock directory owned by
someone else may have been planted (to feed this process tokens, or to read the ones it
writes), so it is refused with a :class:`StorageError` naming it, and left as it is.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from pathlib import Path

from .._errors import StorageError
from .._logging import logger

__all__ = [
    "announce_too_open",
    "check_lock_dir",
    "check_owned",
    "check_store_dir",
    "needs_tightening",
    "open_lock_fd",
]

_too_open: set[str] = set()  # token files found readable by others, until rewritten
_too_open_lock = threading.Lock()
_pending: dict[str, int] = {}  # their modes, until the warning is logged
_MAX_PENDING = 10_000


def _refuse(path: Path, problem: str) -> StorageError:
    return StorageError(
        f"{path} {problem}; it was not used and was left as it is. Processes that share a "
        "store must run as one user: remove it, or run as the user who owns it",
        location=str(path),
    )


def check_owned(fd: int, path: Path, *, token_file: bool = False) -> None:
    """Raise StorageError unless the open file ``fd`` (at ``path``) is this user's.

    A ``token_file`` readable by its group or others is noted: once its contents have been
    read as tokens, :func:`announce_too_open` logs a warning (once), and the next save
    rewrites it with mode 0600 (:func:`needs_tightening`).
    """
    info = os.fstat(fd)
    _check_uid(info, path)
    if token_file and stat.S_ISREG(info.st_mode) and info.st_mode & 0o077:
        with _too_open_lock:
            if str(path) not in _too_open and len(_pending) < _MAX_PENDING:
                _pending[str(path)] = stat.S_IMODE(info.st_mode)
            _too_open.add(str(path))


def announce_too_open(location: str) -> None:
    """Log, once, that the token file ``location`` just read is readable by others."""
    with _too_open_lock:
        mode = _pending.pop(location, None)
    if mode is not None:
        logger.warning(
            "%s has mode %o: others may read the tokens in it. It is used, and the next "
            "save rewrites it with mode 600",
            location,
            mode,
        )


def needs_tightening(path: Path) -> bool:
    """Whether ``path`` was found readable by others (and is forgotten once asked)."""
    with _too_open_lock:
        if str(path) in _too_open:
            _too_open.discard(str(path))
            return True
    return False


def check_lock_dir(path: Path) -> None:
    """Raise StorageError if the lock directory ``path`` is a symlink or another user's."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StorageError(
            f"cannot inspect the lock directory {path}: {exc.strerror}", location=str(path)
        ) from None
    if stat.S_ISLNK(info.st_mode):
        raise _refuse(path, "is a symlink where a lock directory was expected")
    _check_uid(info, path)


def check_store_dir(path: Path) -> None:
    """Raise StorageError if the store directory ``path`` (a symlink to it is fine) is
    another user's: tokens written there would be in a directory someone else controls."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StorageError(
            f"cannot inspect the directory {path}: {exc.strerror}", location=str(path)
        ) from None
    _check_uid(info, path)


def open_lock_fd(path: Path, flags: int, mode: int) -> int:
    """``os.open`` of the lock file ``path`` without following a symlink, checked to be
    this user's. Raises StorageError for a symlink or another user's file, and OSError."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW, mode)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        problem = "is a symlink where a lock file was expected"
    else:
        try:
            check_owned(fd, path)
        except BaseException:
            os.close(fd)
            raise
        return fd
    raise _refuse(path, problem)


def _check_uid(info: os.stat_result, path: Path) -> None:
    me = os.geteuid()
    if info.st_uid != me:
        raise _refuse(path, f"is owned by another user (uid {info.st_uid}, not {me})")
