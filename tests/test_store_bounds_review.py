"""Review of issue 11's store half: regression tests for what the review found.

A file store whose path is (or points to) a FIFO or a device refused it only after its
writes had made a lock directory beside the target: ``/dev/.null.locks`` for a store at
``/dev/null`` (or, as a user who cannot write ``/dev``, a "cannot create the directory"
error that did not say what was wrong). Now every call refuses it before anything is made.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from aioamztoken import StorageError, Token
from aioamztoken.stores import EncryptedFileTokenStore, FileTokenStore

KEY = EncryptedFileTokenStore.generate_key()
OPERATIONS = ("save", "delete", "mark", "lock", "load")


def make_store(kind: str, path: Path) -> FileTokenStore:
    return FileTokenStore(path) if kind == "file" else EncryptedFileTokenStore(path, key=KEY)


async def run(store: FileTokenStore, operation: str) -> object:
    if operation == "save":
        return await store.save("a", Token("Atza|1", "Atzr|1", 2e9))
    if operation == "delete":
        return await store.delete("a")
    if operation == "mark":
        return await store.mark_needs_reauth("a", "Atzr|1")
    if operation == "load":
        return await store.load("a")
    async with store.lock("a"):
        return None


@pytest.mark.parametrize("kind", ["file", "encrypted"])
@pytest.mark.parametrize("operation", OPERATIONS)
async def test_a_symlink_to_a_fifo_gets_no_lock_directory_beside_the_fifo(
    kind: str, operation: str, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    fifo = elsewhere / "pipe"
    os.mkfifo(fifo, 0o600)
    link = tmp_path / "tokens.json"
    link.symlink_to(fifo)
    store = make_store(kind, link)

    with pytest.raises(StorageError, match="FIFO") as caught:
        await run(store, operation)

    assert str(link) in str(caught.value)
    assert sorted(os.listdir(elsewhere)) == ["pipe"]  # no .pipe.locks made beside it
    assert sorted(os.listdir(tmp_path)) == ["elsewhere", "tokens.json"]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert os.readlink(link) == str(fifo)


@pytest.mark.parametrize("kind", ["file", "encrypted"])
@pytest.mark.parametrize("operation", ["save", "delete", "mark", "lock"])
async def test_a_store_at_dev_null_says_it_is_a_device_and_makes_nothing_in_dev(
    kind: str, operation: str, tmp_path: Path
) -> None:
    litter = Path("/dev/.null.locks")
    existed = litter.exists()  # left by an older version, perhaps: then only the message
    store = make_store(kind, tmp_path / "link.json")
    (tmp_path / "link.json").symlink_to("/dev/null")

    with pytest.raises(StorageError, match="is a device, not a regular file"):
        await run(store, operation)

    assert existed or not litter.exists()
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


async def test_a_regular_file_still_gets_its_locks_beside_it(tmp_path: Path) -> None:
    target = tmp_path / "real" / "tokens.json"
    target.parent.mkdir()
    link = tmp_path / "link.json"
    link.symlink_to(target)  # dangling until the first save creates the target
    store = FileTokenStore(link)

    await store.save("a", Token("Atza|1", "Atzr|1", 2e9))
    async with store.lock("a"):
        pass

    assert sorted(os.listdir(target.parent)) == [".tokens.json.locks", "tokens.json"]
    assert await FileTokenStore(target).load("a") == Token("Atza|1", "Atzr|1", 2e9)
