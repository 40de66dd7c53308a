"""The manager's bounds under faults, each measured beside the bound it must keep.

Run: ``.venv/bin/python bench/bench_bounds.py`` (about a minute; ``--quick`` skips the
10,000-account run).

- Descriptors: 2,000 and 10,000 cold accounts of a ``DirectoryTokenStore`` asked for at
  once in a child process whose soft ``RLIMIT_NOFILE`` is 1,024 (``tests/_scripts/
  fd_child.py``): the peak of open descriptors above the baseline, and the callers that
  got no token. Bound: 100 above the baseline, no failure.
- Backoff: the store refuses to save, the endpoint then answers ``invalid_client``, and
  one caller asks for the account's token in a loop for 6 s: token requests. Bound: a
  handful (6).
- Floor: a token issued with ``expires_in`` 0.01 s, left to the background refresh for
  5 s: refreshes per second. Bound: ``1 / min_refresh_interval`` (1 per second).
- Hung store: a store whose ``load`` never answers: how long the caller waits for its
  ``StorageError`` (bound: ``retry_budget`` + 1 s); a store whose ``save`` never answers
  and ignores cancellation: how long ``aclose()`` takes (bound: ``request_timeout`` + 1 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


import aioamztoken as at
from aioamztoken.testing import AmazonEmulator
from bench._common import ROOT, Row, finish, parse_args

FD_BOUND = 100
REQUEST_BOUND = 6
RETRY_BUDGET = 2.0
REQUEST_TIMEOUT = 1.0


async def descriptors(accounts: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as directory:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(ROOT / "tests" / "_scripts" / "fd_child.py"),
            "directory",
            directory,
            str(accounts),
            "1024",
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate()
    result: dict[str, Any] = json.loads(out)
    return result


class RefusingStore(at.MemoryTokenStore):
    refuse = False

    async def save(self, account_id: str, token: at.Token) -> None:
        if self.refuse:
            raise OSError(28, "No space left on device")
        await super().save(account_id, token)


class HungStore(at.MemoryTokenStore):
    """``hang``: the call that never answers; it ignores cancellation until released."""

    def __init__(self) -> None:
        super().__init__()
        self.hang = ""
        self.release = asyncio.Event()
        self.hung = asyncio.Event()

    async def _wait(self) -> None:
        self.hung.set()
        while not self.release.is_set():
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                continue

    async def load(self, account_id: str) -> at.Token | None:
        if self.hang == "load":
            await self._wait()
        return await super().load(account_id)

    async def save(self, account_id: str, token: at.Token) -> None:
        if self.hang == "save":
            await self._wait()
        await super().save(account_id, token)


async def requests_under_refusal(amazon: AmazonEmulator) -> int:
    amazon.token_lifetime = 2.0
    store = RefusingStore()
    async with at.AsyncTokenManager(
        amazon.client_id, amazon.client_secret, store=store, token_url=amazon.token_url
    ) as mgr:
        await mgr.add_account("acct", amazon.issue_refresh_token("acct"))
        store.refuse = True
        with contextlib.suppress(at.StorageError):
            await mgr.get_access_token("acct")
        secret, amazon.client_secret = amazon.client_secret, "rotated-elsewhere"
        amazon.reset_counters()
        deadline = time.monotonic() + 6.0
        while time.monotonic() < deadline:
            with contextlib.suppress(at.AmzTokenError):
                await mgr.get_access_token("acct")
            await asyncio.sleep(0.001)
        requests = amazon.token_requests
        amazon.client_secret = secret
    amazon.token_lifetime = 3600.0
    return requests


async def refreshes_per_second(amazon: AmazonEmulator, seconds: float) -> float:
    amazon.token_lifetime = 0.01
    async with at.AsyncTokenManager(
        amazon.client_id,
        amazon.client_secret,
        store=at.MemoryTokenStore(),
        token_url=amazon.token_url,
    ) as mgr:
        await mgr.add_account("tiny", amazon.issue_refresh_token("tiny"))
        await mgr.get_access_token("tiny")
        amazon.reset_counters()
        await asyncio.sleep(seconds)
        grants = amazon.refresh_grants
    amazon.token_lifetime = 3600.0
    return grants / seconds


async def hung_store(amazon: AmazonEmulator) -> tuple[float, float]:
    """Seconds until the caller of a hung load gets StorageError; seconds aclose() takes
    with a save that never answers."""
    store = HungStore()
    async with at.AsyncTokenManager(
        amazon.client_id,
        amazon.client_secret,
        store=store,
        token_url=amazon.token_url,
        retry_budget=RETRY_BUDGET,
    ) as mgr:
        await mgr.add_account("hung-load", amazon.issue_refresh_token("hung-load"))
        store.hang = "load"
        started = time.monotonic()
        with contextlib.suppress(at.StorageError):
            await mgr.get_access_token("hung-load")
        caller = time.monotonic() - started
        store.hang = ""
        store.release.set()
    store = HungStore()
    mgr = at.AsyncTokenManager(
        amazon.client_id,
        amazon.client_secret,
        store=store,
        token_url=amazon.token_url,
        request_timeout=REQUEST_TIMEOUT,
    )
    await mgr.add_account("hung-save", amazon.issue_refresh_token("hung-save"))
    store.hang = "save"
    call = asyncio.ensure_future(mgr.get_access_token("hung-save"))
    await store.hung.wait()
    started = time.monotonic()
    await mgr.aclose()
    closing = time.monotonic() - started
    store.release.set()
    await asyncio.gather(call, return_exceptions=True)
    return caller, closing


async def main() -> None:
    args = parse_args(__doc__ or "")
    started = time.monotonic()
    rows: list[Row] = []
    for accounts in (2_000,) if args.quick else (2_000, 10_000):
        result = await descriptors(accounts)
        above = result["peak"] - result["baseline"]
        print(f"{accounts:,} cold accounts: {result}")
        rows.append(
            Row(
                f"descriptors above baseline, {accounts:,} cold accounts ({result['failed']} "
                "failed)",
                str(above),
                f"bound {FD_BOUND}",
                f"{above / FD_BOUND:.2f}",
            )
        )
    async with AmazonEmulator() as amazon:
        requests = await requests_under_refusal(amazon)
        print(f"token requests in 6 s, unsaved token then invalid_client: {requests}")
        rows.append(
            Row(
                "token requests in 6 s (unsaved token, then invalid_client)",
                str(requests),
                f"bound {REQUEST_BOUND}",
                f"{requests / REQUEST_BOUND:.2f}",
            )
        )
        rate = await refreshes_per_second(amazon, 3.0 if args.quick else 5.0)
        print(f"background refreshes per second with expires_in=0.01: {rate:.2f}")
        rows.append(
            Row(
                "background refreshes/s, expires_in 0.01 s",
                f"{rate:.2f}",
                "bound 1.00 (min_refresh_interval 1 s)",
                f"{rate:.2f}",
            )
        )
        caller, closing = await hung_store(amazon)
        print(f"hung load: StorageError after {caller:.2f} s; hung save: aclose {closing:.2f} s")
        rows.append(
            Row(
                f"slowest caller, hung load (s; retry_budget {RETRY_BUDGET:g})",
                f"{caller:.2f}",
                f"bound {RETRY_BUDGET + 1:g}",
                f"{caller / (RETRY_BUDGET + 1):.2f}",
            )
        )
        rows.append(
            Row(
                f"aclose(), hung save (s; request_timeout {REQUEST_TIMEOUT:g})",
                f"{closing:.2f}",
                f"bound {REQUEST_TIMEOUT + 1:g}",
                f"{closing / (REQUEST_TIMEOUT + 1):.2f}",
            )
        )
    finish("Bounds under faults (ratio: measured / bound; at most 1)", rows, args, started)


if __name__ == "__main__":
    asyncio.run(main())
