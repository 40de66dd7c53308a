"""File-system primitives of the file stores: paths, reads, atomic writes, worker threads.

The functions here block: call them through :func:`run_sync`. Each turns an ``OSError``
into a :class:`StorageError` naming the path.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread

from .._errors import StorageError
from ._trust import check_lock_dir, check_owned, open_lock_fd

__all__ = [
    "atomic_write",
    "ensure_dir",
    "list_dir",
    "open_lock_file",
    "os_failure",
    "read_bytes",
    "remove",
    "resolve_path",
    "run_sync",
    "wait_despite_cancellation",
]

T = TypeVar("T")

_DIR_MODE = 0o700
_FILE_MODE = 0o600


async def run_sync(func: Callable[[], T]) -> T:
    """Run ``func`` in a worker thread and return its result.

    If the caller is cancelled, this still waits for ``func`` to finish before raising
    ``CancelledError``: a thread cannot be stopped, and the caller's locks must not be
    released while it is still writing.
    """
    task = asyncio.ensure_future(anyio.to_thread.run_sync(func))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await wait_despite_cancellation(task)
        raise


async def wait_despite_cancellation(future: asyncio.Future[Any]) -> None:
    """Wait until ``future`` is done, ignoring cancellation; its outcome is left unread.

    For a caller already cancelled that must not return (and release its locks) while
    work it started is still running. The caller re-raises its ``CancelledError`` after.
    """
    while not future.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait([future])
    if not future.cancelled():
        future.exception()  # marked as retrieved: the caller's cancellation wins


def resolve_path(path: str | os.PathLike[str]) -> Path:
    """``path`` with ``~`` expanded, made absolute (a later ``chdir`` does not move it)."""
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def os_failure(action: str, path: Path, exc: OSError) -> StorageError:
    """The error for ``exc``, raised trying to ``action`` ``path``: raise it ``from exc``."""
    reason = exc.strerror or type(exc).__name__
    return StorageError(f"cannot {action} {path}: {reason}", location=str(path))


def ensure_dir(path: Path) -> None:
    """Create ``path`` and its missing parents, each with mode 0700."""
    try:
        _make_dirs(path)
    except OSError as exc:
        raise os_failure("create the directory", path, exc) from exc


def _make_dirs(path: Path) -> None:
    try:
        os.mkdir(path, _DIR_MODE)
    except FileExistsError:
        return
    except FileNotFoundError:
        if path.parent == path:
            raise
        _make_dirs(path.parent)
        with contextlib.suppress(FileExistsError):  # another process was quicker
            os.mkdir(path, _DIR_MODE)


def read_bytes(path: Path) -> bytes | None:
    """The contents of ``path``, or ``None`` if it does not exist."""
    try:
        with open(path, "rb") as file:
            check_owned(file.fileno(), path, token_file=True)
            return file.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise os_failure("read", path, exc) from exc


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with a mode-0600 file holding ``data``, atomically and durably.

    Readers see the old contents or the new, never a mix, even if this process dies
    midway. The parent directory must exist. A symlink at ``path`` is followed, so the
    file it points to is the one replaced.
    """
    target = Path(os.path.realpath(path))
    # Hidden, and short whatever the target's name: never taken for an account file.
    temp = target.with_name(f".{target.name[:100]}.{secrets.token_hex(8)}.tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise os_failure("write", path, exc) from exc
    _sync_dir(target.parent)


def remove(path: Path) -> None:
    """Delete ``path`` durably; a missing file is not an error."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise os_failure("delete", path, exc) from exc
    _sync_dir(path.parent)


def _sync_dir(path: Path) -> None:
    # Makes the rename or unlink itself survive a power cut, not only the file's data.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):  # file systems that cannot
            raise os_failure("sync the directory", path, exc) from exc


def list_dir(path: Path) -> list[str]:
    """The names of the regular files in ``path``; a missing directory holds none."""
    try:
        with os.scandir(path) as entries:
            return [entry.name for entry in entries if entry.is_file()]
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise os_failure("list", path, exc) from exc


def open_lock_file(path: Path) -> int:
    """A descriptor of the lock file ``path``, created (mode 0600, parents 0700) if needed.

    A lock directory or file owned by another user, or a symlink, is a StorageError."""
    ensure_dir(path.parent)
    check_lock_dir(path.parent)
    try:
        return open_lock_fd(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _FILE_MODE)
    except OSError as exc:
        raise os_failure("open the lock file", path, exc) from exc
