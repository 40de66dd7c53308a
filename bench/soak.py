"""Soak: many accounts, short token lifetimes, a flaky slow endpoint, busy callers.

Default run (issue 3's figures)::

    .venv/bin/python bench/soak.py            # 200 accounts, 20 s tokens, 40 workers, 40 s

Prints caller errors (must be 0), refreshes against the ideal of one per token
lifetime (must be at most 1.6x) and the peak number of token requests in flight
(must be at most the cap, 10). Exits non-zero when a bound is broken.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from dataclasses import dataclass

import aioamztoken as at
from aioamztoken.testing import AmazonEmulator


@dataclass
class SoakResult:
    accounts: int
    lifetime: float
    duration: float
    calls: int
    caller_errors: int
    initial_grants: int
    refreshes: int
    token_requests: int
    failed_requests: int
    peak_in_flight: int
    cap: int

    @property
    def ideal_refreshes(self) -> float:
        return self.accounts * self.duration / self.lifetime

    @property
    def ratio(self) -> float:
        return self.refreshes / self.ideal_refreshes if self.ideal_refreshes else 0.0

    @property
    def ok(self) -> bool:
        return self.caller_errors == 0 and self.ratio <= 1.6 and self.peak_in_flight <= self.cap

    def render(self) -> str:
        return "\n".join(
            [
                f"soak: {self.accounts} accounts, {self.lifetime:g} s tokens, {self.duration:g} s, "
                f"endpoint failing ~10% with 503 and 0-150 ms latency",
                f"  caller calls             {self.calls}",
                f"  caller errors            {self.caller_errors}  (must be 0)",
                f"  refreshes                {self.refreshes} "
                f"after {self.initial_grants} first fetches",
                f"  ideal (1 per lifetime)   {self.ideal_refreshes:.0f}",
                f"  refreshes / ideal        {self.ratio:.2f}x  (must be <= 1.6x)",
                f"  token requests           {self.token_requests} "
                f"({self.failed_requests} failed, retried)",
                f"  peak requests in flight  {self.peak_in_flight}  (cap {self.cap})",
                f"  result                   {'ok' if self.ok else 'FAILED'}",
            ]
        )


async def run_soak(
    *,
    accounts: int = 200,
    lifetime: float = 20.0,
    duration: float = 40.0,
    workers: int = 40,
    failure_rate: float = 0.10,
    refresh_buffer: float = 4.0,
    cap: int = 10,
    seed: int = 1,
) -> SoakResult:
    rng = random.Random(seed)
    async with AmazonEmulator(token_lifetime=lifetime, seed=seed) as emu:
        emu.latency = (0.0, 0.150)
        emu.failure_rate = failure_rate
        ids = [f"soak-{n:04d}" for n in range(accounts)]
        async with at.AsyncTokenManager(
            emu.client_id,
            emu.client_secret,
            store=at.MemoryTokenStore(),
            token_url=emu.token_url,
            refresh_buffer=refresh_buffer,
            max_concurrent_refreshes=cap,
        ) as mgr:
            for account_id in ids:
                await mgr.add_account(account_id, emu.issue_refresh_token(account_id))
            # First fetch of every account, bounded by the cap like everything else.
            await asyncio.gather(*(mgr.get_access_token(a) for a in ids))
            initial = emu.refresh_grants
            calls = errors = 0
            deadline = time.monotonic() + duration

            async def worker() -> None:
                nonlocal calls, errors
                while time.monotonic() < deadline:
                    account_id = rng.choice(ids)
                    try:
                        token = await mgr.get_access_token(account_id)
                        if not token:
                            errors += 1
                    except at.AmzTokenError:
                        errors += 1
                    calls += 1
                    await asyncio.sleep(rng.uniform(0.0, 0.004))  # the caller's own work

            await asyncio.gather(*(worker() for _ in range(workers)))
            failed = sum(1 for r in emu.token_log if r.status != 200)
            return SoakResult(
                accounts=accounts,
                lifetime=lifetime,
                duration=duration,
                calls=calls,
                caller_errors=errors,
                initial_grants=initial,
                refreshes=emu.refresh_grants - initial,
                token_requests=emu.token_requests,
                failed_requests=failed,
                peak_in_flight=emu.max_in_flight,
                cap=cap,
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument("--lifetime", type=float, default=20.0)
    parser.add_argument("--duration", type=float, default=40.0)
    parser.add_argument("--workers", type=int, default=40)
    parser.add_argument("--buffer", type=float, default=4.0)
    args = parser.parse_args(argv)
    result = asyncio.run(
        run_soak(
            accounts=args.accounts,
            lifetime=args.lifetime,
            duration=args.duration,
            workers=args.workers,
            refresh_buffer=args.buffer,
        )
    )
    print(result.render())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
