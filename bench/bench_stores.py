"""The cost of one save with 10 accounts stored, against the cost with 10,000, per store.

Run: ``.venv/bin/python bench/bench_stores.py`` (about 30 s; ``--quick``: about 10 s).

For each store (memory, file, directory, encrypted file, SQLite; Redis when
``redis-server`` is on the PATH, PostgreSQL when its server binaries are installed: each
started for the run on loopback) two instances are filled, one with 10 accounts and one
with 10,000; then
single saves of existing accounts are timed one at a time, alternating between the two
in rounds, and the medians compared. The file stores keep every account in one document,
so their save rewrites it all: their cost grows with the number of accounts by design.
The directory, SQLite, PostgreSQL and Redis stores touch one account per save.

Filling: the file stores through ``save`` (concurrent saves are written together), the
directory by writing the same account files ``save`` would write (without fsync, to be
quick), SQLite and PostgreSQL by inserting the rows ``save`` would write (in one
transaction), Redis through ``save``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))

import aioamztoken as at
from aioamztoken.stores._codec import encode_account, encode_name
from aioamztoken.stores._crypto import TokenCipher
from bench._common import Row, finish, parse_args, repo_on_path

SMALL, LARGE = 10, 10_000
#: Saves timed per size and round, and rounds, per store (slow stores get fewer).
PLAN = {
    "memory": (500, 6),
    "redis": (100, 6),
    "sqlite": (60, 6),
    "postgres": (100, 6),
    "directory": (30, 6),
    "file": (4, 4),
    "encrypted-file": (4, 4),
}


def account_ids(count: int) -> list[str]:
    return [f"amzn1.account.{n:06d}" for n in range(count)]


def token_for(n: int) -> at.Token:
    """A token with the lengths of real LwA tokens (about 400 characters each)."""
    return at.Token(
        "Atza|" + f"{n:08d}" * 48, "Atzr|" + f"{n:08d}" * 48, time.time() + 3600, scope="s"
    )


def populate_directory(path: Path, count: int) -> None:
    """Write ``count`` account files as DirectoryTokenStore.save does (without fsync)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    for n, account_id in enumerate(account_ids(count)):
        target = path / f"{encode_name(account_id)}.json"
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, encode_account(account_id, token_for(n)))
        finally:
            os.close(fd)


async def fill(store: at.TokenStore, count: int) -> None:
    ids = account_ids(count)
    for start in range(0, count, 500):
        chunk = ids[start : start + 500]
        await asyncio.gather(*(store.save(a, token_for(start + i)) for i, a in enumerate(chunk)))


def populate_sqlite(path: Path, count: int) -> None:
    """Insert ``count`` rows as SQLiteTokenStore.save writes them, in one transaction."""
    import sqlite3

    rows = [
        (b"aioamztoken", a.encode(), encode_account(a, token_for(n)))
        for n, a in enumerate(account_ids(count))
    ]
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.executemany("INSERT INTO aioamztoken_tokens VALUES (?, ?, ?)", rows)


async def populate_postgres(dsn: str, namespace: str, count: int) -> None:
    """Insert ``count`` rows as PostgresTokenStore.save writes them."""
    import asyncpg

    rows = [
        (namespace.encode(), a.encode(), encode_account(a, token_for(n)))
        for n, a in enumerate(account_ids(count))
    ]
    conn = await asyncpg.connect(dsn)
    try:
        await conn.executemany("INSERT INTO aioamztoken_tokens VALUES ($1, $2, $3)", rows)
        await conn.execute("ANALYZE aioamztoken_tokens")
    finally:
        await conn.close()


@contextlib.contextmanager
def postgres_server() -> Iterator[str | None]:
    repo_on_path()
    from tests.db_servers import PG_BIN, PostgresServer

    if PG_BIN is None:
        yield None
        return
    server = PostgresServer()
    try:
        yield server.start().dsn
    finally:
        server.stop()


@contextlib.contextmanager
def redis_server() -> Iterator[str | None]:
    repo_on_path()
    from tests.redis_server import REDIS_SERVER, RedisServer

    if REDIS_SERVER is None:
        yield None
        return
    server = RedisServer().start()
    try:
        yield server.url
    finally:
        server.stop()


StoreFactory = Callable[[Path, int], at.TokenStore]


@contextlib.asynccontextmanager
async def open_pair(
    kind: str, base: Path, redis_url: str | None, postgres_dsn: str | None = None
) -> AsyncIterator[tuple[at.TokenStore, at.TokenStore]]:
    """A store with SMALL accounts and one with LARGE, filled."""
    key = TokenCipher.generate_key()
    stores: list[at.TokenStore] = []
    for count in (SMALL, LARGE):
        where = base / f"{kind}-{count}"
        store: at.TokenStore
        if kind == "memory":
            store = at.MemoryTokenStore()
        elif kind == "file":
            store = at.FileTokenStore(where / "tokens.json")
        elif kind == "encrypted-file":
            store = at.stores.EncryptedFileTokenStore(where / "tokens.bin", key=key)
        elif kind == "directory":
            populate_directory(where, count)
            store = at.DirectoryTokenStore(where)
        elif kind == "sqlite":
            store = at.SQLiteTokenStore(where / "tokens.db")
            await store.save("seed", token_for(0))  # creates the file and its table
            await store.delete("seed")
            populate_sqlite(where / "tokens.db", count)
        elif kind == "postgres":
            assert postgres_dsn is not None
            store = at.PostgresTokenStore(postgres_dsn, namespace=f"bench-{count}")
            await store.save("seed", token_for(0))
            await store.delete("seed")
            await populate_postgres(postgres_dsn, f"bench-{count}", count)
        else:
            assert redis_url is not None
            store = at.RedisTokenStore(redis_url, namespace=f"bench-{count}")
        if kind not in ("directory", "sqlite", "postgres"):
            await fill(store, count)
        assert len(await store.accounts()) == count
        stores.append(store)
    try:
        yield stores[0], stores[1]
    finally:
        for store in stores:
            if isinstance(store, (at.RedisTokenStore, at.SQLiteTokenStore, at.PostgresTokenStore)):
                await store.aclose()


@dataclass(frozen=True)
class SaveCost:
    kind: str
    small_us: float
    large_us: float

    @property
    def ratio(self) -> float:
        return self.large_us / self.small_us


async def save_cost(
    kind: str,
    base: Path,
    redis_url: str | None,
    *,
    saves: int,
    rounds: int,
    postgres_dsn: str | None = None,
) -> SaveCost:
    rng = random.Random(1)
    times: dict[int, list[float]] = {SMALL: [], LARGE: []}
    async with open_pair(kind, base, redis_url, postgres_dsn) as (small, large):
        for number in range(rounds):
            pairs = [(SMALL, small), (LARGE, large)]
            for count, store in pairs if number % 2 == 0 else pairs[::-1]:
                ids = account_ids(count)
                for _ in range(saves):
                    n = rng.randrange(count)
                    token = token_for(n + number + 1)
                    started = time.perf_counter()
                    await store.save(ids[n], token)
                    times[count].append(time.perf_counter() - started)
    return SaveCost(
        kind,
        statistics.median(times[SMALL]) * 1e6,
        statistics.median(times[LARGE]) * 1e6,
    )


async def run(*, quick: bool = False, kinds: tuple[str, ...] = tuple(PLAN)) -> list[SaveCost]:
    results = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        redis_server() as redis_url,
        postgres_server() if "postgres" in kinds else contextlib.nullcontext() as postgres_dsn,
    ):
        for kind in kinds:
            if kind == "redis" and redis_url is None:
                print("  redis: redis-server not on the PATH, skipped")
                continue
            if kind == "postgres" and postgres_dsn is None:
                print("  postgres: PostgreSQL's server binaries not found, skipped")
                continue
            saves, rounds = PLAN[kind]
            if quick:
                saves, rounds = max(2, saves // 4), max(2, rounds // 2)
            cost = await save_cost(
                kind, Path(tmp), redis_url, saves=saves, rounds=rounds, postgres_dsn=postgres_dsn
            )
            print(
                f"  {kind:15} {cost.small_us:10.1f} us at {SMALL:,}  {cost.large_us:10.1f} us at "
                f"{LARGE:,}  ratio {cost.ratio:6.2f}x  ({saves} saves x {rounds} rounds each)"
            )
            results.append(cost)
    return results


def micros(value: float) -> str:
    return f"{value:.1f} us" if value < 10 else f"{value:,.0f} us"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    started = time.monotonic()
    print(f"median cost of one save, {SMALL:,} accounts stored vs {LARGE:,}:")
    costs = asyncio.run(run(quick=args.quick))
    rows = [
        Row(
            f"save cost at {LARGE:,} vs {SMALL:,} accounts: {c.kind}",
            f"{micros(c.large_us)} at {LARGE:,}",
            f"{micros(c.small_us)} at {SMALL:,}",
            f"{c.ratio:.2f}x",
        )
        for c in costs
    ]
    finish("store save cost summary", rows, args, started)


if __name__ == "__main__":
    main()
