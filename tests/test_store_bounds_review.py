"""Review of issue 11's store half: regression tests for what the review found.

A file store whose path is (or points to) a FIFO or a device refused it only after its
writes had made a lock directory beside the target: ``/dev/.null.locks`` for a store at
``/dev/null`` (or, as a user who cannot write ``/dev``, a "cannot create the directory"
error that did not say what was wrong). Now every call refuses it before anything is made.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aioamztoken import RedisTokenStore, StorageError, Token, TokenStore, open_store
from aioamztoken.stores import DirectoryTokenStore, EncryptedFileTokenStore, FileTokenStore

from .redis_server import REDIS_SERVER, SKIP_REASON, RedisServer

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


# ------------------------------------------------------------------ Redis bounds in a store URL
# open_store("redis://...?timeout=1") gave the 1 s to redis-py's pool wait only: each
# command kept the 5 s default socket timeout, so a frozen Redis took about 15 s to report.


@pytest.fixture
def frozen_able_redis() -> Iterator[RedisServer]:
    if REDIS_SERVER is None:
        pytest.skip(SKIP_REASON)
    server = RedisServer().start()
    yield server
    server.stop()  # resumes a frozen server first


async def timed_load(store: TokenStore) -> tuple[object, float]:
    started = time.monotonic()
    try:
        result: object = await store.load("a")
    except Exception as exc:
        result = exc
    return result, time.monotonic() - started


@pytest.mark.redis
async def test_a_redis_url_timeout_bounds_every_command_on_a_frozen_redis(
    frozen_able_redis: RedisServer,
) -> None:
    pytest.importorskip("redis")
    store = open_store(f"{frozen_able_redis.url}?timeout=1&max_connections=5&namespace=rv")
    assert isinstance(store, RedisTokenStore)
    async with store:
        await store.save("a", Token("Atza|1", "Atzr|1", 2e9))
        frozen_able_redis.pause()
        try:
            outcomes = await asyncio.gather(*(timed_load(store) for _ in range(20)))
        finally:
            frozen_able_redis.resume()
        assert {type(result).__name__ for result, _ in outcomes} == {"StorageError"}
        slowest = max(seconds for _, seconds in outcomes)
        assert slowest < 3 * 1.0 + 2.5, f"the slowest caller waited {slowest:.1f}s"
        assert await asyncio.wait_for(store.load("a"), 10) == Token("Atza|1", "Atzr|1", 2e9)


@pytest.mark.parametrize("query", ["timeout=soon", "max_connections=1.5", "lock_ttl=x"])
def test_an_unusable_redis_url_bound_is_a_clear_error(query: str) -> None:
    pytest.importorskip("redis")
    with pytest.raises(ValueError, match=query.split("=")[0] + "="):
        open_store(f"redis://127.0.0.1:1/0?{query}")


def test_redis_url_bounds_reach_the_store() -> None:
    pytest.importorskip("redis")
    store = open_store("redis://127.0.0.1:1/0?lock_ttl=7.5&timeout=2")
    assert isinstance(store, RedisTokenStore)
    assert store.lock_ttl == 7.5
    with pytest.raises(ValueError, match="positive"):
        open_store("redis://127.0.0.1:1/0?timeout=0")


# ------------------------------------------------------------------ writes beyond max_file_size
# A save that made the file larger than max_file_size was written: from then on every
# call of that store refused the file it had just written ("larger than max_file_size").


@pytest.mark.parametrize("kind", ["file", "encrypted"])
async def test_a_save_that_would_outgrow_max_file_size_is_refused_and_nothing_written(
    kind: str, tmp_path: Path
) -> None:
    path = tmp_path / "tokens.json"
    store = (
        FileTokenStore(path, max_file_size=2000)
        if kind == "file"
        else EncryptedFileTokenStore(path, key=KEY, max_file_size=2000)
    )
    refused: StorageError | None = None
    saved = 0
    for n in range(100):
        before = path.read_bytes() if path.exists() else None
        try:
            await store.save(f"account-{n}", Token(f"Atza|{n}", f"Atzr|{n}", 2e9))
        except StorageError as exc:
            refused = exc
            break
        saved += 1
    assert refused is not None, "100 saves fitted in 2,000 bytes"
    assert 0 < saved < 100
    assert "max_file_size" in str(refused)
    assert "nothing was written" in str(refused)
    assert path.read_bytes() == before  # the last file that fits, untouched
    assert path.stat().st_size <= 2000
    assert await store.accounts() == sorted(f"account-{n}" for n in range(saved))
    await store.delete("account-0")  # the store still works, within its cap
    assert await store.load("account-0") is None


async def test_a_directory_save_that_would_outgrow_max_file_size_is_refused(
    tmp_path: Path,
) -> None:
    store = DirectoryTokenStore(tmp_path / "tokens", max_file_size=600)
    await store.save("a", Token("Atza|1", "Atzr|1", 2e9))
    before = (tmp_path / "tokens" / "a.json").read_bytes()

    with pytest.raises(StorageError, match="max_file_size"):
        await store.save("a", Token("Atza|2", "Atzr|2", 2e9, scope="x" * 1000))
    with pytest.raises(StorageError, match="max_file_size"):
        await store.save("b", Token("Atza|2", "Atzr|2", 2e9, scope="x" * 1000))

    assert (tmp_path / "tokens" / "a.json").read_bytes() == before
    assert sorted(os.listdir(tmp_path / "tokens")) == ["a.json"]
    assert await store.load("a") == Token("Atza|1", "Atzr|1", 2e9)


async def test_a_mark_that_would_outgrow_max_file_size_is_refused_and_the_file_kept(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "tokens"
    token = Token("Atza|1", "Atzr|1", 2e9)
    await DirectoryTokenStore(directory).save("a", token)
    before = (directory / "a.json").read_bytes()
    store = DirectoryTokenStore(directory, max_file_size=len(before))  # full to the byte

    with pytest.raises(StorageError, match="max_file_size"):
        await store.mark_needs_reauth("a", "Atzr|1")

    assert (directory / "a.json").read_bytes() == before
    assert await store.load("a") == token
