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
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread

from .._errors import StorageError
from ._trust import check_lock_dir, check_owned, open_lock_fd

__all__ = [
    "DEFAULT_MAX_FILE_SIZE",
    "atomic_write",
    "check_regular_or_absent",
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

#: The default ``max_file_size`` (bytes) of the file stores: a file larger than this is
#: refused (StorageError) rather than read into memory. 64 MiB holds some 40,000 accounts
#: in one :class:`FileTokenStore` file; a :class:`DirectoryTokenStore` account file is a
#: few kilobytes.
DEFAULT_MAX_FILE_SIZE = 64 * 1024 * 1024

_READ_CHUNK = 1024 * 1024


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


def read_bytes(path: Path, max_size: int = DEFAULT_MAX_FILE_SIZE) -> bytes | None:
    """The contents of ``path``, or ``None`` if it does not exist.

    Only a regular file (or a symlink to one) is read: a FIFO, a device, a socket or a
    directory there raises StorageError at once, without waiting for a writer or reading
    a stream that never ends. So does a file larger than ``max_size`` bytes, which is
    never read into memory. Neither is ever overwritten: callers read before they write.
    """
    try:
        # stat first, so that a device is never even opened; fstat after, because the
        # name may have been replaced in between. O_NONBLOCK: opening a FIFO never waits.
        _check_regular(path, os.stat(path).st_mode)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise os_failure("read", path, exc) from exc
    try:
        info = os.fstat(fd)
        _check_regular(path, info.st_mode)
        _check_size(path, info.st_size, max_size)
        check_owned(fd, path, token_file=True)
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, min(_READ_CHUNK, max_size + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            _check_size(path, size, max_size)  # it grew while being read
        return b"".join(chunks)
    except OSError as exc:
        raise os_failure("read", path, exc) from exc
    finally:
        os.close(fd)


def check_regular_or_absent(path: Path, shown: Path | None = None) -> None:
    """Raise the StorageError :func:`read_bytes` would if ``path`` exists but is not a
    regular file (a FIFO, a device, a directory: symlinks followed), naming ``shown``.

    For a store to call before it creates anything next to ``path`` (its lock files):
    nothing is made beside a device, say in ``/dev``. A missing or unreachable ``path``
    passes; reading it reports that.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    _check_regular(path if shown is None else shown, mode)


def _check_regular(path: Path, mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    if stat.S_ISFIFO(mode):
        kind = "a FIFO (named pipe)"
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        kind = "a device"
    elif stat.S_ISDIR(mode):  # reported as open() would have
        exc = IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        raise os_failure("read", path, exc) from exc
    elif stat.S_ISSOCK(mode):
        kind = "a socket"
    else:
        kind = "an unknown kind of file"
    raise StorageError(
        f"{path} is {kind}, not a regular file: it was not read and is left untouched",
        location=str(path),
    )


def _check_size(path: Path, size: int, max_size: int) -> None:
    if size > max_size:
        raise StorageError(
            f"{path} is larger than the store's max_file_size ({max_size} bytes): it was "
            "not read and is left untouched; raise max_file_size if it is genuine",
            location=str(path),
        )


def atomic_write(path: Path, data: bytes, max_size: int | None = None) -> None:
    """Replace ``path`` with a mode-0600 file holding ``data``, atomically and durably.

    Readers see the old contents or the new, never a mix, even if this process dies
    midway. The parent directory must exist. A symlink at ``path`` is followed, so the
    file it points to is the one replaced. ``data`` longer than ``max_size`` (the store's
    ``max_file_size``: it could not read the file back) raises StorageError, nothing
    written.
    """
    if max_size is not None and len(data) > max_size:
        raise StorageError(
            f"{path} would become larger than the store's max_file_size ({max_size} "
            f"bytes: {len(data)} bytes), which it could not read back: nothing was "
            "written; raise max_file_size",
            location=str(path),
        )
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
