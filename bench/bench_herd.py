"""Token requests under a herd: a cold herd of 1,000 callers, and 100 accounts asked 3 times.

Run: ``.venv/bin/python bench/bench_herd.py`` (about 10 s, against the emulator).

Both scenarios start cold (each account holds only its refresh token), the emulator
holding every token request ``LATENCY`` seconds so that callers overlap. Measured: the
requests the emulator receives, the peak of requests in flight at once, and the seconds
until every caller had a token (after one warm-up request each, so that neither pays
for first-use costs). Each scenario runs ``REPEATS`` times, contenders alternating, on
fresh accounts: seconds are medians, counts the worst (highest) seen.

The manager runs with its default cap of 10 requests in flight, and again with the cap
raised to the number of accounts, to show what the cap costs. The baseline is Authlib's
``AsyncOAuth2Client``, one client per account, its token endpoint pointed at the
emulator, each caller running ``ensure_active_token`` (what its ``request()`` does
first). Authlib is installed for the benchmark only (``.venv/bin/pip install authlib
httpx``); without it those lines are skipped with a message.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))

import aioamztoken as at
from aioamztoken.testing import AmazonEmulator
from bench._common import AUTHLIB_MISSING, Row, authlib_client_class, finish, parse_args

LATENCY = 0.05
HERD = 1_000
ACCOUNTS = 100
ASKS = 3
REPEATS = 3


@dataclass(frozen=True)
class Herd:
    """Token requests (and seconds until every caller had a token) for one scenario."""

    requests: int
    seconds: float
    peak_in_flight: int
    distinct_tokens: int


async def ours(emu: AmazonEmulator, accounts: list[str], asks: int, cap: int = 10) -> Herd:
    async with at.AsyncTokenManager(
        emu.client_id,
        emu.client_secret,
        store=at.MemoryTokenStore(),
        token_url=emu.token_url,
        max_concurrent_refreshes=cap,
    ) as mgr:
        for account_id in ["warm-up", *accounts]:
            await mgr.add_account(account_id, emu.issue_refresh_token(account_id))
        await mgr.get_access_token("warm-up")
        emu.reset_counters()
        started = time.perf_counter()
        tokens = await asyncio.gather(
            *(mgr.get_access_token(a) for _ in range(asks) for a in accounts)
        )
        seconds = time.perf_counter() - started
        return Herd(emu.token_requests, seconds, emu.max_in_flight, len(set(tokens)))


async def authlib(emu: AmazonEmulator, accounts: list[str], asks: int) -> Herd | None:
    client_class = authlib_client_class()
    if client_class is None:
        return None
    warm_up = client_class(
        emu.client_id,
        emu.client_secret,
        token_endpoint=emu.token_url,
        token={"refresh_token": emu.issue_refresh_token("warm-up"), "expires_at": 0},
    )
    await warm_up.ensure_active_token(warm_up.token)
    await warm_up.aclose()
    clients: dict[str, Any] = {
        a: client_class(
            emu.client_id,
            emu.client_secret,
            token_endpoint=emu.token_url,
            token={
                "access_token": "",
                "refresh_token": emu.issue_refresh_token(a),
                "token_type": "bearer",
                "expires_at": 0,
            },
        )
        for a in accounts
    }

    async def ask(account_id: str) -> str:
        client = clients[account_id]
        await client.ensure_active_token(client.token)
        return str(client.token["access_token"])

    try:
        emu.reset_counters()
        started = time.perf_counter()
        tokens = await asyncio.gather(*(ask(a) for _ in range(asks) for a in accounts))
        seconds = time.perf_counter() - started
        return Herd(emu.token_requests, seconds, emu.max_in_flight, len(set(tokens)))
    finally:
        for client in clients.values():
            await client.aclose()


def rows_for(name: str, mine: Herd | None, uncapped: Herd | None, peer: Herd | None) -> list[Row]:
    assert mine is not None

    def show(who: str, herd: Herd) -> None:
        print(
            f"    {who:28} {herd.requests:4d} token requests, peak {herd.peak_in_flight:3d} "
            f"in flight, {herd.seconds:.2f} s, {herd.distinct_tokens} distinct tokens"
        )

    print(f"  {name}")
    show("aioamztoken (cap 10)", mine)
    if uncapped is not None:
        show(f"aioamztoken (cap {uncapped.peak_in_flight})", uncapped)
    if peer is None:
        print(f"    {AUTHLIB_MISSING}")
        return [Row(f"{name}: token requests", str(mine.requests), "Authlib missing", "-")]
    show("Authlib, 1 client/account", peer)
    rows = [
        Row(
            f"{name}: token requests",
            str(mine.requests),
            f"{peer.requests} (Authlib)",
            f"{mine.requests / peer.requests:.2f}x",
        ),
        Row(
            f"{name}: peak requests in flight",
            str(mine.peak_in_flight),
            f"{peer.peak_in_flight} (Authlib)",
            f"{mine.peak_in_flight / peer.peak_in_flight:.2f}x",
        ),
        Row(
            f"{name}: seconds until all served",
            f"{mine.seconds:.2f}",
            f"{peer.seconds:.2f} (Authlib)",
            f"{mine.seconds / peer.seconds:.2f}x",
        ),
    ]
    if uncapped is not None:
        rows.append(
            Row(
                f"{name}: seconds, cap raised to {uncapped.peak_in_flight}",
                f"{uncapped.seconds:.2f}",
                f"{peer.seconds:.2f} (Authlib)",
                f"{uncapped.seconds / peer.seconds:.2f}x",
            )
        )
    return rows


def summarize(herds: list[Herd | None]) -> Herd | None:
    """Median seconds, worst counts; ``None`` if Authlib was missing."""
    done = [h for h in herds if h is not None]
    if not done:
        return None
    return Herd(
        max(h.requests for h in done),
        statistics.median(h.seconds for h in done),
        max(h.peak_in_flight for h in done),
        min(h.distinct_tokens for h in done),
    )


def names(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{n:03d}" for n in range(count)]


async def run(
    herd: int = HERD, accounts: int = ACCOUNTS, asks: int = ASKS, repeats: int = REPEATS
) -> list[Row]:
    rows: list[Row] = []
    async with AmazonEmulator() as emu:
        emu.latency = LATENCY
        print(f"herds (cold caches, emulator latency {LATENCY * 1000:.0f} ms, {repeats} runs):")
        mine: list[Herd | None] = []
        peer: list[Herd | None] = []
        for r in range(repeats):  # alternating, so that load hits both alike
            mine.append(await ours(emu, names(f"herd{r}", 1), herd))
            peer.append(await authlib(emu, names(f"herd{r}-authlib", 1), herd))
        name = f"cold herd, {herd:,} callers, 1 account"
        rows += rows_for(name, summarize(mine), None, summarize(peer))
        mine, uncapped, peer = [], [], []
        for r in range(repeats):
            mine.append(await ours(emu, names(f"many{r}", accounts), asks))
            uncapped.append(await ours(emu, names(f"many{r}-x", accounts), asks, cap=accounts))
            peer.append(await authlib(emu, names(f"many{r}-authlib", accounts), asks))
        name = f"{accounts} accounts x {asks} callers each"
        rows += rows_for(name, summarize(mine), summarize(uncapped), summarize(peer))
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    started = time.monotonic()
    rows = asyncio.run(run())
    finish("herd summary", rows, args, started)


if __name__ == "__main__":
    main()
