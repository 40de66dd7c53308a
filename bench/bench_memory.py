"""Memory per account: what an ``AsyncTokenManager`` holds for each of 10,000 loaded accounts.

Run: ``.venv/bin/python bench/bench_memory.py`` (a few seconds).

``tracemalloc`` counts what the manager allocates while 10,000 accounts are loaded
(one ``get_access_token`` each; every token fresh, a background refresh scheduled for
each), after a garbage collection, divided by 10,000. Two cases:

- the manager's own structures: the store is a ``MemoryTokenStore`` whose tokens the
  manager shares (nothing of the token itself is counted);
- with its own copy of each token, as with any persistent store (file, directory, Redis:
  each load decodes new strings), tokens the length of real LwA tokens (about 400
  characters each for the access and the refresh token).

The baseline beside each: the size of one such token (the ``Token`` object and its two
strings), i.e. the data any client must keep.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time
import tracemalloc
from dataclasses import dataclass

if __package__ in (None, ""):
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))

import aioamztoken as at
from bench._common import Row, finish, parse_args

ACCOUNTS = 10_000


def token_for(n: int) -> at.Token:
    """A token with the lengths of real LwA tokens (about 400 characters each)."""
    return at.Token(
        "Atza|" + f"{n:08d}" * 48, "Atzr|" + f"{n:08d}" * 48, time.time() + 3600, scope="s"
    )


def token_bytes(token: at.Token) -> int:
    return (
        sys.getsizeof(token)
        + sys.getsizeof(token.access_token)
        + sys.getsizeof(token.refresh_token)
        + sys.getsizeof(token.expires_at)
    )


class DecodingStore(at.MemoryTokenStore):
    """Keeps tokens as JSON bytes and decodes each load, as the persistent stores do."""

    def __init__(self) -> None:
        super().__init__()
        self._blobs: dict[str, bytes] = {}

    async def save(self, account_id: str, token: at.Token) -> None:
        self._blobs[account_id] = json.dumps(token.to_dict()).encode()

    async def load(self, account_id: str) -> at.Token | None:
        blob = self._blobs.get(account_id)
        return None if blob is None else at.Token.from_dict(json.loads(blob))


@dataclass(frozen=True)
class Memory:
    per_account: float
    accounts: int


async def per_account(store: at.TokenStore, accounts: int, *, auto_refresh: bool = True) -> Memory:
    """Bytes the manager allocates per loaded account (tokens fresh, timers scheduled)."""
    ids = [f"amzn1.account.{n:06d}" for n in range(accounts + 1)]
    for n, account_id in enumerate(ids):
        await store.save(account_id, token_for(n))
    async with at.AsyncTokenManager(
        "client-id",
        "client-secret",
        store=store,
        token_url="http://127.0.0.1:9/never",
        auto_refresh=auto_refresh,
    ) as mgr:
        await mgr.get_access_token(ids[0])  # every lazily built structure exists now
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for account_id in ids[1:]:
                await mgr.get_access_token(account_id)
            gc.collect()
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
    return Memory((after - before) / accounts, accounts)


async def run(accounts: int = ACCOUNTS) -> list[Row]:
    size = token_bytes(token_for(0))
    shared = await per_account(at.MemoryTokenStore(), accounts)
    copied = await per_account(DecodingStore(), accounts)
    no_timers = await per_account(DecodingStore(), accounts, auto_refresh=False)
    print(f"memory per loaded account, {accounts:,} accounts (tracemalloc):")
    print(f"  manager structures, token shared with the store  {shared.per_account:7.0f} B")
    print(f"  with its own copy of a ~400-character token pair  {copied.per_account:7.0f} B")
    print(f"  the same, auto_refresh=False (no timer)           {no_timers.per_account:7.0f} B")
    print(f"  one such token itself (Token + 2 strings)         {size:7d} B")
    return [
        Row(
            "memory per account: manager structures",
            f"{shared.per_account:.0f} B",
            "2,048 B (the bound)",
            f"{shared.per_account / 2048:.2f}x",
        ),
        Row(
            "memory per account: incl. its copy of the token",
            f"{copied.per_account:.0f} B",
            f"{size} B (the token itself)",
            f"{copied.per_account / size:.2f}x",
        ),
    ]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    started = time.monotonic()
    rows = asyncio.run(run())
    finish("memory summary", rows, args, started)


if __name__ == "__main__":
    main()
