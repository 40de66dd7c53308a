"""Child for the descriptor-bound test: N cold accounts asked for at once under a low
soft RLIMIT_NOFILE. Prints one JSON line: baseline and peak open descriptors, failures.

Usage: fd_child.py STORE_KIND DIRECTORY ACCOUNTS [NOFILE]
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import resource
import sys
import time
from pathlib import Path

import aioamztoken as at
from aioamztoken.testing import AmazonEmulator


def open_fds(limit: int) -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # EMFILE: listing needs a descriptor itself
        return limit


def make_store(kind: str, directory: Path) -> at.TokenStore:
    if kind == "directory":
        return at.DirectoryTokenStore(directory / "tokens")
    if kind == "file":
        return at.FileTokenStore(directory / "tokens.json")
    if kind == "encrypted":
        return at.EncryptedFileTokenStore(
            directory / "tokens.enc", key=at.EncryptedFileTokenStore.generate_key()
        )
    raise SystemExit(f"unknown store kind {kind!r}")


async def main(kind: str, directory: Path, count: int, nofile: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = min(nofile, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    store = make_store(kind, directory)
    async with AmazonEmulator() as amazon:
        ids = [f"acct-{i}" for i in range(count)]
        async with at.AsyncTokenManager(
            amazon.client_id, amazon.client_secret, store=store, token_url=amazon.token_url
        ) as seed:
            for start in range(0, count, 500):  # concurrent saves batch in the file stores
                await asyncio.gather(
                    *(
                        seed.add_account(a, amazon.issue_refresh_token(a))
                        for a in ids[start : start + 500]
                    )
                )
        async with at.AsyncTokenManager(
            amazon.client_id,
            amazon.client_secret,
            store=store,
            token_url=amazon.token_url,
        ) as mgr:
            await mgr.get_access_token(ids[0])  # the session and its connector exist
            baseline = open_fds(limit)
            peak = baseline
            done = False

            async def sample() -> None:
                nonlocal peak
                while not done:
                    peak = max(peak, open_fds(limit))
                    await asyncio.sleep(0.005)

            sampler = asyncio.create_task(sample())
            started = time.monotonic()
            results = await asyncio.gather(
                *(mgr.get_access_token(a) for a in ids[1:]), return_exceptions=True
            )
            elapsed = time.monotonic() - started
            done = True
            await sampler
            failures = collections.Counter(
                f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)
            )
            ok = sum(1 for r in results if isinstance(r, str) and r)
    print(
        json.dumps(
            {
                "baseline": baseline,
                "peak": peak,
                "ok": ok + 1,
                "failures": dict(failures.most_common(3)),
                "failed": sum(failures.values()),
                "token_requests": amazon.refresh_grants,
                "seconds": round(elapsed, 1),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    asyncio.run(
        main(
            sys.argv[1],
            Path(sys.argv[2]),
            int(sys.argv[3]),
            int(sys.argv[4]) if len(sys.argv) > 4 else 1024,
        )
    )
