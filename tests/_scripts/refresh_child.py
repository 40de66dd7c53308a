"""A child process for tests/test_cross_process.py: one AsyncTokenManager, many callers.

refresh_child.py STORE_URL ACCOUNT CALLERS

Opens the store with open_store(STORE_URL) and a manager pointed at the token endpoint
in AIOAMZTOKEN_TOKEN_URL (client id and secret in AIOAMZTOKEN_CLIENT_ID and
AIOAMZTOKEN_CLIENT_SECRET), prints "ready", waits for a line on stdin, then lets
CALLERS concurrent tasks get the access token of ACCOUNT and prints, as one JSON line,
the sorted list of distinct tokens they got.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from aioamztoken import AsyncTokenManager, open_store


async def main(store_url: str, account_id: str, callers: int) -> None:
    store = open_store(store_url)
    async with AsyncTokenManager(
        os.environ["AIOAMZTOKEN_CLIENT_ID"],
        os.environ["AIOAMZTOKEN_CLIENT_SECRET"],
        store=store,
        token_url=os.environ["AIOAMZTOKEN_TOKEN_URL"],
    ) as mgr:
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        tokens = await asyncio.gather(*(mgr.get_access_token(account_id) for _ in range(callers)))
        print(json.dumps(sorted(set(tokens))), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
