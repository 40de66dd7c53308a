"""Inputs are bounded in the file stores (issue 11): a FIFO, a device or a symlink to one
at a store's path is refused at once, a file beyond ``max_file_size`` is refused without
being read, and neither is ever overwritten. Hanging and memory-eating cases run in a
child process (with a 1 GiB address-space limit) that is killed if it hangs."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from aioamztoken import StorageError, Token
from aioamztoken.stores import DirectoryTokenStore, EncryptedFileTokenStore, FileTokenStore
from aioamztoken.stores._fs import DEFAULT_MAX_FILE_SIZE

from ._children import child

SCRIPT = Path(__file__).parent / "_scripts" / "fault_child.py"
KEY = EncryptedFileTokenStore.generate_key()
#: A child that has not answered by then is taken to hang (the operation itself must
#: take well under a second; startup on a loaded machine takes the rest).
HANG_TIMEOUT = 20.0
KINDS = ("file", "directory", "encrypted")


def token(n: int = 1) -> Token:
    return Token(f"Atza|{n}", f"Atzr|{n}", 2e9 + n)


def store_path(kind: str, base: Path) -> tuple[Path, Path]:
    """The path to open the store at, and where the account "a" is read from."""
    if kind == "directory":
        return base / "tokens", base / "tokens" / "a.json"
    return base / "tokens.json", base / "tokens.json"


def plant(case: str, at: Path, base: Path) -> None:
    """Put a FIFO, a symlink to one, or a symlink to an endless device at ``at``."""
    at.parent.mkdir(parents=True, exist_ok=True)
    if case == "fifo":
        os.mkfifo(at, 0o600)
    elif case == "symlink-to-fifo":
        os.mkfifo(base / "elsewhere.fifo", 0o600)
        at.symlink_to(base / "elsewhere.fifo")
    else:
        at.symlink_to("/dev/zero")


def unplug(at: Path) -> None:
    """Give a reader stuck on the FIFO at ``at`` its end of file, so a hung child can go."""
    try:
        fd = os.open(at, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return
    os.close(fd)


async def probe(kind: str, path: Path, operation: str, at: Path) -> dict[str, Any]:
    env = {**os.environ, "AIOAMZTOKEN_KEY": KEY}
    async with child(SCRIPT, "probe", kind, str(path), operation, env=env) as proc:
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), HANG_TIMEOUT)
            assert line.strip() == b"ready", line
            line = await asyncio.wait_for(proc.stdout.readline(), HANG_TIMEOUT)
        except asyncio.TimeoutError:
            unplug(at)
            pytest.fail(f"{kind} store {operation}() hung on {at}")
        if not line:
            assert proc.stderr is not None
            pytest.fail(f"the child died: {(await proc.stderr.read()).decode()[-2000:]}")
        outcome: dict[str, Any] = json.loads(line)
        return outcome


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", ["fifo", "symlink-to-fifo", "device"])
async def test_a_fifo_or_device_at_the_store_path_is_refused_at_once_and_left_alone(
    kind: str, case: str, tmp_path: Path
) -> None:
    path, at = store_path(kind, tmp_path)
    plant(case, at, tmp_path)
    before = os.lstat(at)
    operations = ["save", "load"] if case == "fifo" else ["save"]
    for operation in operations:
        outcome = await probe(kind, path, operation, at)
        assert outcome.get("error") == "StorageError", outcome
        assert "not a regular file" in outcome["message"]
        assert str(at) in outcome["message"]
        assert outcome["seconds"] < 3.0  # at once: nothing waited for a writer
    # Never overwritten: the same FIFO or symlink is still there.
    after = os.lstat(at)
    assert (after.st_ino, stat.S_IFMT(after.st_mode)) == (
        before.st_ino,
        stat.S_IFMT(before.st_mode),
    )
    assert not any(name.endswith(".tmp") for name in os.listdir(at.parent))


async def test_a_fifo_as_a_file_store_is_refused_by_accounts_too(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    os.mkfifo(path, 0o600)
    outcome = await probe("file", path, "accounts", path)
    assert outcome.get("error") == "StorageError", outcome
    assert stat.S_ISFIFO(os.lstat(path).st_mode)


async def test_a_fifo_among_account_files_is_not_listed_and_refused_when_read(
    tmp_path: Path,
) -> None:
    store = DirectoryTokenStore(tmp_path / "d")
    await store.save("b", token())
    os.mkfifo(tmp_path / "d" / "a.json", 0o600)
    assert await store.accounts() == ["b"]
    for call in (store.load("a"), store.delete("a")):
        task = asyncio.ensure_future(call)
        await asyncio.wait([task], timeout=5)
        if not task.done():
            unplug(tmp_path / "d" / "a.json")
            await asyncio.wait([task])
            task.exception()
            pytest.fail("reading a FIFO hung")
        with pytest.raises(StorageError, match="FIFO"):
            task.result()
    assert stat.S_ISFIFO(os.lstat(tmp_path / "d" / "a.json").st_mode)


# ------------------------------------------------------------------------------ size caps


def make_store(kind: str, path: Path, **options: Any) -> Any:
    if kind == "file":
        return FileTokenStore(path, **options)
    if kind == "directory":
        return DirectoryTokenStore(path, **options)
    return EncryptedFileTokenStore(path, key=KEY, **options)


@pytest.mark.parametrize("kind", KINDS)
async def test_a_store_file_beyond_max_file_size_is_refused_and_never_overwritten(
    kind: str, tmp_path: Path
) -> None:
    path, at = store_path(kind, tmp_path)
    roomy = make_store(kind, path)
    await roomy.save("a", Token("Atza|" + "x" * 5000, "Atzr|" + "y" * 5000, 2e9))
    data = at.read_bytes()
    assert len(data) > 10_000
    tight = make_store(kind, path, max_file_size=10_000)
    assert tight.max_file_size == 10_000
    for call in (tight.load("a"), tight.save("a", token()), tight.delete("a")):
        with pytest.raises(StorageError, match="max_file_size") as err:
            await call
        assert str(at) in str(err.value)
        assert "Atz" not in str(err.value)
    assert at.read_bytes() == data  # never overwritten
    assert (await roomy.load("a")) is not None  # a larger cap reads it again


@pytest.mark.parametrize("kind", ["file", "encrypted"])
async def test_a_huge_store_file_is_refused_without_being_read(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    with open(path, "wb") as file:  # sparse: costs no disk, and would cost 65 MiB to read
        file.truncate(DEFAULT_MAX_FILE_SIZE + 1)
    store = make_store(kind, path)
    with pytest.raises(StorageError, match="max_file_size"):
        await store.accounts()
    with pytest.raises(StorageError, match="max_file_size"):
        await store.save("a", token())
    assert path.stat().st_size == DEFAULT_MAX_FILE_SIZE + 1


def test_the_default_caps_are_documented_values() -> None:
    assert FileTokenStore("x").max_file_size == DEFAULT_MAX_FILE_SIZE == 64 * 1024 * 1024
    assert DirectoryTokenStore("x").max_file_size == 1024 * 1024
    with pytest.raises(ValueError, match="max_file_size"):
        FileTokenStore("x", max_file_size=0)
    with pytest.raises(ValueError, match="max_file_size"):
        DirectoryTokenStore("x", max_file_size=0)


async def test_a_socket_at_the_store_path_is_refused_at_once(tmp_path: Path) -> None:
    import socket

    path = tmp_path / "tokens.json"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        with pytest.raises(StorageError, match="a socket"):
            await asyncio.wait_for(FileTokenStore(path).save("a", token()), 5)
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
