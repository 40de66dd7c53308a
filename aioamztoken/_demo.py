"""``aioamztoken demo``: a realistic run against the embedded emulator, no Amazon account needed."""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from ._errors import InvalidGrantError
from ._manager import AsyncTokenManager
from ._models import Token
from .stores import FileTokenStore
from .testing import AmazonEmulator

__all__ = ["DemoReport", "run_demo"]


@dataclass
class DemoReport:
    """What the demo did, in numbers."""

    accounts: int = 0
    callers: int = 0
    callers_served: int = 0
    token_requests: int = 0
    ideal_token_requests: int = 0
    max_in_flight: int = 0
    expired_account_refreshed: bool = False
    revoked_account_flagged: bool = False
    rejected_token_recovered: bool = False
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.callers_served == self.callers
            and self.token_requests == self.ideal_token_requests
            and self.expired_account_refreshed
            and self.revoked_account_flagged
            and self.rejected_token_recovered
        )

    def render(self) -> str:
        ratio = self.callers_served / max(self.token_requests, 1)
        per_account = self.callers // max(self.accounts, 1)

        def said(ok: bool, good: str) -> str:
            return good if ok else "FAILED"

        lines = [
            "aioamztoken demo: against the embedded Login with Amazon + Ads API emulator",
            f"  accounts                 {self.accounts}",
            f"  concurrent callers       {self.callers} ({per_account} per account)",
            f"  callers served           {self.callers_served}",
            f"  token requests made      {self.token_requests} "
            f"(ideal {self.ideal_token_requests}: one per account that needed one)",
            f"  callers per request      {ratio:.1f}",
            f"  peak requests in flight  {self.max_in_flight} (cap 10)",
            "  expired token            "
            + said(self.expired_account_refreshed, "refreshed once, on first use"),
            "  revoked refresh token    "
            + said(self.revoked_account_flagged, "flagged: needs re-authorization"),
            "  token rejected by API    "
            + said(self.rejected_token_recovered, "refreshed once, requests retried"),
            f"  time taken               {self.seconds * 1000:.0f} ms",
        ]
        lines.extend(f"  note: {note}" for note in self.notes)
        lines.append("  result                   " + ("ok" if self.ok else "FAILED"))
        return "\n".join(lines)


async def run_demo(accounts: int = 50, callers_per_account: int = 40) -> DemoReport:
    """Drive a manager against the emulator and report what happened."""
    report = DemoReport(accounts=accounts)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="aioamztoken-demo-") as tmp:
        store = FileTokenStore(Path(tmp) / "tokens.json")
        async with AmazonEmulator() as emu:
            emu.latency = (0.02, 0.08)  # a realistic round trip, so requests overlap
            ids = [f"demo-account-{n:03d}" for n in range(accounts)]
            expired_id, revoked_id = "demo-expired", "demo-revoked"
            async with AsyncTokenManager(
                emu.client_id, emu.client_secret, store=store, token_url=emu.token_url
            ) as mgr:
                for account_id in ids:
                    await mgr.add_account(account_id, emu.issue_refresh_token(account_id))
                # One account whose stored access token expired an hour ago.
                await store.save(
                    expired_id,
                    Token(
                        emu.issue_access_token(expired_id),
                        emu.issue_refresh_token(expired_id),
                        time.time() - 3600,
                    ),
                )
                # One account whose refresh token the user revoked.
                await mgr.add_account(revoked_id, emu.issue_refresh_token(revoked_id))
                emu.revoke(revoked_id)

                async def caller(account_id: str) -> bool:
                    token = await mgr.get_access_token(account_id)
                    return bool(token)

                jobs = [caller(a) for a in ids for _ in range(callers_per_account)]
                jobs += [caller(expired_id) for _ in range(callers_per_account)]
                report.callers = len(jobs)
                results = await asyncio.gather(*jobs)
                report.callers_served = sum(results)
                report.expired_account_refreshed = emu.token_requests_for(expired_id) == 1

                try:
                    await mgr.get_access_token(revoked_id)
                except InvalidGrantError:
                    status = await mgr.status(revoked_id)
                    report.revoked_account_flagged = status.state.value == "needs-reauth"

                # The Ads API rejects a token that still looks valid (revoked server side):
                # the middleware refreshes once (compare-and-refresh) and retries.
                report.rejected_token_recovered = await _rejected_token_round(mgr, emu, ids[0])

                report.token_requests = emu.token_requests
                report.ideal_token_requests = accounts + 1 + 1 + 1
                report.max_in_flight = emu.max_in_flight
    report.seconds = time.perf_counter() - started
    return report


async def _rejected_token_round(
    mgr: AsyncTokenManager, emu: AmazonEmulator, account_id: str
) -> bool:
    import aiohttp

    emu.expire_access_tokens(account_id)
    middleware = mgr.middleware(account_id, profile_id="1", origins=[emu.api_url])
    async with aiohttp.ClientSession(middlewares=[middleware]) as session:
        replies = await asyncio.gather(
            *(session.get(f"{emu.api_url}/v2/profiles") for _ in range(20))
        )
        statuses = [r.status for r in replies]
        for reply in replies:
            reply.release()
    return all(s == 200 for s in statuses)


def main(out: TextIO) -> int:
    """Run the demo, print the report, and return the exit status."""
    report = asyncio.run(run_demo())
    print(report.render(), file=out)
    return 0 if report.ok else 1
