"""Refresh waves: 10,000 accounts due at the same moment, refreshed in the background.

Run: ``.venv/bin/python bench/bench_waves.py`` (about 15 s; ``--quick``: 2,000 accounts).

The worst case for a token endpoint: every account's token was fetched at the same moment,
so all of them expire together. 10,000 such tokens are loaded into one manager
(``refresh_buffer`` 20 s, tokens expiring 20 s plus a lead from the start: 2 s, or
three times a measured rehearsal of the loading plus 1 s if longer), which schedules each
background refresh at a jittered moment in ``[expires_at - buffer, expires_at -
buffer/2]``: a 10 s window. The emulator holds each request 1 to 10 ms; callers keep
asking for random accounts meanwhile. Reported:

- requests per second: the peak 1-second bin against the mean over the wave, beside the
  baseline of no spreading (all 10,000 due in the same instant);
- the peak of requests in flight at the endpoint, beside the cap (10);
- callers: calls made, errors, and the slowest call (none waits for a refresh).

``--data PATH`` also writes the run's time series as JSON: token requests per 0.25 s bin
and the requests in flight at the emulator, sampled every 20 ms, both against seconds
since the tokens became due. ``docs/figures/waves.py`` plots that file for the docs
(``docs/figures/waves.json`` is a real run of this script).
"""

from __future__ import annotations

import asyncio
import collections
import json
import platform
import random
import sys
import time
from dataclasses import dataclass

if __package__ in (None, ""):
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))

import aioamztoken as at
from aioamztoken.testing import AmazonEmulator
from bench._common import Row, finish, parse_args

ACCOUNTS = 10_000
BUFFER = 20.0
LEAD = 2.0  # the least time (seconds) from loading's start until the tokens are due
CAP = 10
WORKERS = 10


@dataclass(frozen=True)
class Waves:
    accounts: int
    window: float
    token_requests: int
    refresh_grants: int
    peak_in_flight: int
    cap: int
    per_second: list[int]
    """Token requests in each 1-second bin, from the first request to the last."""
    span: float
    """Seconds from the first token request to the last."""
    calls: int
    caller_errors: int
    slowest_call: float
    request_times: list[float]
    """When each token request arrived, in seconds since the tokens became due."""
    in_flight: list[tuple[float, int]]
    """(seconds since the tokens became due, requests in flight at the emulator)."""

    @property
    def mean_rate(self) -> float:
        return self.token_requests / self.span if self.span else float("inf")

    @property
    def peak_rate(self) -> int:
        return max(self.per_second, default=0)

    @property
    def peak_to_mean(self) -> float:
        return self.peak_rate / self.mean_rate if self.mean_rate else float("inf")


async def load_time(ids: list[str]) -> float:
    """Seconds it takes now, on this machine, to save and load a token for each of ``ids``
    into a manager: a rehearsal with tokens far from due (no refresh, no request)."""
    store = at.MemoryTokenStore()
    started = time.monotonic()
    for n, account_id in enumerate(ids):
        await store.save(account_id, at.Token(f"Atza|{n}", f"Atzr|{n}", time.time() + 3600))
    async with at.AsyncTokenManager(
        "client-id", "client-secret", store=store, token_url="http://127.0.0.1:9/never"
    ) as mgr:
        for account_id in ids:
            await mgr.get_access_token(account_id)
    return time.monotonic() - started


async def run_waves(
    *,
    accounts: int = ACCOUNTS,
    buffer: float = BUFFER,
    lead: float | None = None,
    cap: int = CAP,
    workers: int = WORKERS,
    seed: int = 1,
) -> Waves:
    """``lead``: seconds from the start of loading until the tokens are due; by default
    three times a measured rehearsal of the loading plus a second (at least ``LEAD``), so
    that however loaded the machine is, no token is due before every one is loaded."""
    rng = random.Random(seed)
    ids = [f"amzn1.account.{n:06d}" for n in range(accounts)]
    if lead is None:
        lead = max(LEAD, 3 * await load_time(ids) + 1)
    async with AmazonEmulator(seed=seed) as emu:
        emu.latency = (0.001, 0.010)
        store = at.MemoryTokenStore()
        # Issued first: what the lead must cover is the saving and loading, below.
        lifetime = lead + buffer + 60
        issued = [
            (emu.issue_access_token(a, lifetime=lifetime), emu.issue_refresh_token(a))
            for a in ids
        ]
        expires_at = time.time() + lead + buffer  # the same moment for every token
        due = time.monotonic() + lead  # when that moment minus the buffer comes
        for account_id, (access_token, refresh_token) in zip(ids, issued, strict=True):
            await store.save(account_id, at.Token(access_token, refresh_token, expires_at))
        async with at.AsyncTokenManager(
            emu.client_id,
            emu.client_secret,
            store=store,
            token_url=emu.token_url,
            refresh_buffer=buffer,
            max_concurrent_refreshes=cap,
        ) as mgr:
            for account_id in ids:  # load every account (no token request: all fresh)
                await mgr.get_access_token(account_id)
            assert emu.token_requests == 0, "loading made token requests"
            assert time.time() < expires_at - buffer, "loading took longer than the lead"
            # Only a bound: the callers stop once every account is refreshed. Generous, for a
            # loaded machine may refresh far slower than the window's 1,000 a second.
            deadline = due + buffer / 2 + 120
            calls = errors = 0
            slowest = 0.0

            async def caller() -> None:
                nonlocal calls, errors, slowest
                while emu.refresh_grants < accounts and time.monotonic() < deadline:
                    started = time.monotonic()
                    try:
                        await mgr.get_access_token(rng.choice(ids))
                    except at.AmzTokenError:
                        errors += 1
                    slowest = max(slowest, time.monotonic() - started)
                    calls += 1
                    await asyncio.sleep(0.005)  # the caller's own work

            samples: list[tuple[float, int]] = []

            async def sample() -> None:
                while time.monotonic() < deadline:
                    samples.append((time.monotonic() - due, emu.in_flight))
                    await asyncio.sleep(0.02)

            sampler = asyncio.create_task(sample())
            await asyncio.gather(*(caller() for _ in range(workers)))
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
            times = sorted(r.time for r in emu.token_log)
            first = times[0] if times else 0.0
            bins = collections.Counter(int(t - first) for t in times)
            per_second = [bins[i] for i in range(max(bins, default=-1) + 1)]
            return Waves(
                accounts=accounts,
                window=buffer / 2,
                token_requests=emu.token_requests,
                refresh_grants=emu.refresh_grants,
                peak_in_flight=emu.max_in_flight,
                cap=cap,
                per_second=per_second,
                span=(times[-1] - first) if times else 0.0,
                calls=calls,
                caller_errors=errors,
                slowest_call=slowest,
                request_times=[t - due for t in times],
                in_flight=samples,
            )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(
        __doc__.splitlines()[0], argv, data="also write the run's time series (JSON) here"
    )
    started = time.monotonic()
    accounts = 2_000 if args.quick else ACCOUNTS
    w = asyncio.run(run_waves(accounts=accounts))
    print(
        f"refresh wave: {w.accounts:,} tokens expiring together, refresh_buffer {BUFFER:g} s "
        f"(window {w.window:g} s), cap {w.cap}, endpoint latency 1-10 ms"
    )
    print(f"  token requests            {w.token_requests:,} ({w.refresh_grants:,} refreshed)")
    print(f"  spread over               {w.span:.1f} s (window {w.window:g} s)")
    print(f"  requests per second       {' '.join(str(n) for n in w.per_second)}")
    print(
        f"  peak / mean per second    {w.peak_rate} / {w.mean_rate:.0f} = {w.peak_to_mean:.2f}x "
        f"(without spreading: all {w.accounts:,} due in one instant)"
    )
    print(f"  peak in flight            {w.peak_in_flight} (cap {w.cap})")
    print(
        f"  callers meanwhile         {w.calls:,} calls, {w.caller_errors} errors, "
        f"slowest {w.slowest_call * 1000:.1f} ms"
    )
    rows = [
        Row(
            f"refresh wave, {w.accounts:,} accounts: peak req/s vs mean",
            f"{w.peak_rate} req/s",
            f"{w.mean_rate:.0f} req/s (mean)",
            f"{w.peak_to_mean:.2f}x",
        ),
        Row(
            f"refresh wave, {w.accounts:,} accounts: peak in flight",
            str(w.peak_in_flight),
            f"{w.cap} (the cap)",
            f"{w.peak_in_flight / w.cap:.2f}x",
        ),
        Row(
            f"refresh wave, {w.accounts:,} accounts: token requests",
            f"{w.token_requests:,}",
            f"{w.accounts:,} (one per account)",
            f"{w.token_requests / w.accounts:.2f}x",
        ),
    ]
    finish("refresh wave summary", rows, args, started)
    if args.data:
        write_data(args.data, w)


def write_data(path: str, w: Waves, bin_width: float = 0.25) -> None:
    """The time series of a run, for ``docs/figures/waves.py``."""
    bins = collections.Counter(int(t // bin_width) for t in w.request_times)
    first, last = (min(bins), max(bins)) if bins else (0, -1)
    with open(path, "w", encoding="utf-8") as out:
        json.dump(
            {
                "command": "python bench/bench_waves.py --data docs/figures/waves.json",
                "recorded": time.strftime("%Y-%m-%d", time.gmtime()),
                "python": platform.python_version(),
                "accounts": w.accounts,
                "refresh_buffer": BUFFER,
                "window": w.window,
                "cap": w.cap,
                "token_requests": w.token_requests,
                "peak_in_flight": w.peak_in_flight,
                "bin_width": bin_width,
                "bins": [
                    [round(n * bin_width, 3), bins[n]] for n in range(first, last + 1)
                ],
                "in_flight": [[round(t, 3), n] for t, n in w.in_flight],
            },
            out,
            separators=(",", ":"),
        )
        out.write("\n")


if __name__ == "__main__":
    main()
