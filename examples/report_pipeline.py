"""An asynchronous ad-reporting pipeline for many accounts and profiles at once.

For every account it lists the advertising profiles (``GET /v2/profiles``); for every
profile it requests a Sponsored Products campaign report the way Amazon's v3 reporting
API wants (``POST /reporting/reports``), polls its status (``GET
/reporting/reports/{reportId}``) until it is ``COMPLETED``, and downloads the gzip JSON
file from the URL the status gives. That URL is a pre-signed S3 URL on another origin:
the bearer token must never go there (S3 would answer 400, and the token would leak).

What aioamztoken does for it:

- ``mgr.session(account, profile_id=...)`` signs every Ads API request with a token
  fetched as the request is sent, so polls that outlive a token carry the new one;
- requests to any other origin (the S3 download) go out untouched;
- a 401 (Amazon rejecting a token that looked valid) is recovered with one shared
  refresh per account and one retry per request;
- ``mgr.trace_config()`` counts those 401s and retries.

Run as a script, it starts aioamztoken's loopback emulator of Amazon (the download
origin, acting as S3, listens on a second port), registers several accounts, runs the
pipeline, prints a summary and exits 0 when every report arrived and no token leaked::

    python examples/report_pipeline.py [--accounts 4] [--polls 6] [--token-lifetime 1]

Against the real Ads API, build the manager from your own client id, secret and token
store and call :func:`run_pipeline` with the default ``base_url`` and ``origins``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import sys
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, TypeVar

import aiohttp

from aioamztoken import AsyncTokenManager, MemoryTokenStore
from aioamztoken.testing import AmazonEmulator

__all__ = [
    "PipelineError",
    "PipelineRun",
    "ReportResult",
    "demo",
    "main",
    "report_request",
    "run_pipeline",
]

#: The media type Amazon's v3 reporting API expects for report creation.
CREATE_REPORT_TYPE = "application/vnd.createasyncreportrequest.v3+json"
T = TypeVar("T")
COLUMNS = ("campaignId", "campaignName", "impressions", "clicks", "cost", "purchases7d", "sales7d")


class PipelineError(Exception):
    """A report could not be created, polled or downloaded."""


@dataclass
class ReportResult:
    """One profile's report, downloaded and decoded."""

    account_id: str
    profile_id: str
    report_id: str
    polls: int
    rows: list[dict[str, Any]]
    seconds: float

    @property
    def impressions(self) -> int:
        return sum(int(row.get("impressions") or 0) for row in self.rows)

    @property
    def clicks(self) -> int:
        return sum(int(row.get("clicks") or 0) for row in self.rows)

    @property
    def cost(self) -> float:
        return round(sum(float(row.get("cost") or 0.0) for row in self.rows), 2)


def report_request(start: date, end: date) -> dict[str, Any]:
    """The body of ``POST /reporting/reports``: SP campaigns, summed over the dates."""
    return {
        "name": f"SP campaigns {start.isoformat()}..{end.isoformat()}",
        "startDate": start.isoformat(),
        "endDate": end.isoformat(),
        "configuration": {
            "adProduct": "SPONSORED_PRODUCTS",
            "groupBy": ["campaign"],
            "columns": list(COLUMNS),
            "reportTypeId": "spCampaigns",
            "timeUnit": "SUMMARY",
            "format": "GZIP_JSON",
        },
    }


#: How many times one call is sent again after 429 Too Many Requests.
THROTTLE_RETRIES = 5


async def _call(
    http: aiohttp.ClientSession, method: str, url: str, what: str, **kwargs: Any
) -> Any:
    """Send one Ads API call; wait as told and try again on 429; the JSON answer."""
    for _ in range(THROTTLE_RETRIES + 1):
        async with http.request(method, url, **kwargs) as response:
            if response.status != 429:
                if response.status != 200:
                    # Amazon's error bodies are {"code", "details"}: no secret in them.
                    detail = (await response.text())[:200]
                    raise PipelineError(f"{what}: HTTP {response.status}: {detail}")
                return await response.json(content_type=None)
            delay = _retry_after(response)
        await asyncio.sleep(delay)
    raise PipelineError(f"{what}: still throttled after {THROTTLE_RETRIES} retries")


def _retry_after(response: aiohttp.ClientResponse) -> float:
    try:
        return min(60.0, max(0.0, float(response.headers.get("Retry-After", "1"))))
    except ValueError:
        return 1.0


async def list_profiles(http: aiohttp.ClientSession) -> list[str]:
    """The profile ids an account may use (``GET /v2/profiles``)."""
    profiles = await _call(http, "GET", "/v2/profiles", "listing profiles")
    return [str(profile["profileId"]) for profile in profiles]


async def fetch_report(
    http: aiohttp.ClientSession,
    account_id: str,
    profile_id: str,
    *,
    start: date,
    end: date,
    poll_interval: float,
    deadline: float,
) -> ReportResult:
    """Create, poll and download one report with ``http``, a session signed for the profile."""
    started = time.monotonic()
    created = await _call(
        http,
        "POST",
        "/reporting/reports",
        f"creating a report for profile {profile_id}",
        data=json.dumps(report_request(start, end)),
        headers={"Content-Type": CREATE_REPORT_TYPE},
    )
    report_id = created["reportId"]
    polls = 0
    while True:
        if time.monotonic() > deadline:
            raise PipelineError(f"report {report_id} of profile {profile_id} took too long")
        polls += 1
        # Every poll fetches the token as it is sent: a long poll outlives tokens.
        status = await _call(
            http, "GET", f"/reporting/reports/{report_id}", f"polling report {report_id}"
        )
        if status["status"] == "COMPLETED":
            break
        if status["status"] == "FAILED":
            raise PipelineError(f"report {report_id} failed: {status.get('failureReason')}")
        await asyncio.sleep(poll_interval)
    # Another origin (S3): the middleware lets it through without bearer or Amazon headers.
    async with http.get(status["url"]) as response:
        if response.status != 200:
            raise PipelineError(f"downloading report {report_id}: HTTP {response.status}")
        payload = await response.read()
    rows = json.loads(gzip.decompress(payload))
    return ReportResult(account_id, profile_id, report_id, polls, rows, time.monotonic() - started)


async def run_pipeline(
    mgr: AsyncTokenManager,
    account_ids: Sequence[str],
    *,
    base_url: str | None = None,
    origins: Sequence[str] | None = None,
    start: date | None = None,
    end: date | None = None,
    poll_interval: float = 5.0,
    max_concurrent_reports: int = 20,
    timeout: float = 900.0,
) -> list[ReportResult]:
    """Fetch a campaign report for every profile of every account, concurrently.

    ``base_url``/``origins`` default to the manager's region of the real Ads API; pass
    the emulator's ``api_url`` for both to run locally. At most
    ``max_concurrent_reports`` reports are in progress at once; all share one
    connection pool. Raises :class:`PipelineError` (or aioamztoken's typed errors,
    e.g. ``InvalidGrantError`` for an account that needs re-authorization) on the
    first report that fails; the others are cancelled.
    """
    end = end or date.today() - timedelta(days=1)
    start = start or end - timedelta(days=6)
    deadline = time.monotonic() + timeout
    slots = asyncio.Semaphore(max_concurrent_reports)
    options: dict[str, Any] = {"trace_configs": [mgr.trace_config()]}
    if base_url is not None:
        options["base_url"] = base_url
    if origins is not None:
        options["origins"] = list(origins)

    async with aiohttp.TCPConnector(limit=100) as connector:
        options.update(connector=connector, connector_owner=False)

        async def one_profile(account_id: str, profile_id: str) -> ReportResult:
            async with slots, mgr.session(account_id, profile_id=profile_id, **options) as http:
                return await fetch_report(
                    http,
                    account_id,
                    profile_id,
                    start=start,
                    end=end,
                    poll_interval=poll_interval,
                    deadline=deadline,
                )

        async def one_account(account_id: str) -> list[ReportResult]:
            async with mgr.session(account_id, **options) as http:
                profiles = await list_profiles(http)
            return await _all_or_none([one_profile(account_id, p) for p in profiles])

        per_account = await _all_or_none([one_account(a) for a in account_ids])
    return [result for results in per_account for result in results]


async def _all_or_none(coroutines: list[Coroutine[Any, Any, T]]) -> list[T]:
    """Run concurrently; on the first failure cancel the rest and raise it (a TaskGroup
    in Python 3.11+, written out for 3.10)."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


# ---- running it against the emulator ------------------------------------------------


@dataclass
class PipelineRun:
    """A run of the pipeline against the emulator, with what Amazon saw of it."""

    results: list[ReportResult]
    accounts: int
    seconds: float
    token_requests: int
    rejected: int
    retried: int
    downloads: int
    downloads_with_authorization: int
    polls_with_several_tokens: int
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.results) and self.downloads_with_authorization == 0

    def render(self) -> str:
        lines = [
            f"report pipeline: {self.accounts} accounts, {len(self.results)} profiles, "
            f"{len(self.results)} reports in {self.seconds:.2f} s",
            f"  {'account':<10} {'profile':<15} {'polls':>5} {'rows':>5} "
            f"{'impressions':>12} {'clicks':>7} {'cost':>10}",
        ]
        for r in sorted(self.results, key=lambda r: (r.account_id, r.profile_id)):
            lines.append(
                f"  {r.account_id:<10} {r.profile_id:<15} {r.polls:>5} {len(r.rows):>5} "
                f"{r.impressions:>12} {r.clicks:>7} {r.cost:>10.2f}"
            )
        lines += [
            f"  token requests            {self.token_requests}",
            f"  reports whose polls carried more than one token  "
            f"{self.polls_with_several_tokens} of {len(self.results)}",
            f"  401s from the Ads API     {self.rejected} (retried by the middleware: "
            f"{self.retried})",
            f"  downloads from S3 origin  {self.downloads}, "
            f"with an Authorization header: {self.downloads_with_authorization}",
            *(f"  note: {note}" for note in self.notes),
            "OK" if self.ok else "FAILED",
        ]
        return "\n".join(lines)


async def demo(
    *,
    accounts: int = 4,
    polls: int = 6,
    poll_interval: float = 0.2,
    token_lifetime: float = 1.0,
    expire_tokens_after: float | None = 0.3,
) -> PipelineRun:
    """Run the pipeline against a fresh emulator: ``accounts`` accounts, two profiles each.

    Access tokens live ``token_lifetime`` seconds and reports take ``polls`` polls, so
    tokens are renewed while reports are being polled. ``expire_tokens_after`` seconds
    into the run, every access token is revoked early by "Amazon": the next requests get
    401s, which the middleware recovers from.
    """
    async with AmazonEmulator(token_lifetime=token_lifetime) as amazon:
        amazon.report_polls = polls
        async with AsyncTokenManager(
            amazon.client_id,
            amazon.client_secret,
            store=MemoryTokenStore(),
            token_url=amazon.token_url,
        ) as mgr:
            names = [f"acct-{n + 1}" for n in range(accounts)]
            for name in names:
                await mgr.add_account(name, amazon.issue_refresh_token(name))

            async def expire_later(delay: float) -> None:
                await asyncio.sleep(delay)
                amazon.expire_access_tokens()

            expiring = (
                None
                if expire_tokens_after is None
                else asyncio.create_task(expire_later(expire_tokens_after))
            )
            started = time.monotonic()
            try:
                results = await run_pipeline(
                    mgr,
                    names,
                    base_url=amazon.api_url,
                    origins=[amazon.api_url],
                    poll_interval=poll_interval,
                    timeout=60.0,
                )
            finally:
                if expiring is not None:
                    expiring.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await expiring
            seconds = time.monotonic() - started
            trace = mgr.trace_config()
            tokens_per_report: dict[str, set[str]] = {}
            for record in amazon.api_log:
                if record.path.startswith("/reporting/reports/") and record.status == 200:
                    tokens_per_report.setdefault(record.path, set()).add(
                        record.headers.get("Authorization", "")
                    )
            notes = []
            if expiring is not None and not trace.rejected:
                notes.append("no request carried a token that Amazon had expired early")
            return PipelineRun(
                results=results,
                accounts=accounts,
                seconds=seconds,
                token_requests=amazon.token_requests,
                rejected=trace.rejected,
                retried=trace.retried,
                downloads=amazon.download_requests,
                downloads_with_authorization=sum(
                    "Authorization" in r.headers for r in amazon.download_log
                ),
                polls_with_several_tokens=sum(len(t) > 1 for t in tokens_per_report.values()),
                notes=notes,
            )


async def main(argv: Sequence[str] | None = None) -> int:
    """Run :func:`demo` with command-line options, print its summary; 0 when all is well."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--accounts", type=int, default=4)
    parser.add_argument("--polls", type=int, default=6, help="status polls per report")
    parser.add_argument("--poll-interval", type=float, default=0.2, help="seconds")
    parser.add_argument("--token-lifetime", type=float, default=1.0, help="seconds")
    parser.add_argument("--expire-after", type=float, default=0.3, help="seconds; negative: never")
    args = parser.parse_args(argv)
    run = await demo(
        accounts=args.accounts,
        polls=args.polls,
        poll_interval=args.poll_interval,
        token_lifetime=args.token_lifetime,
        expire_tokens_after=None if args.expire_after < 0 else args.expire_after,
    )
    print(run.render())
    return 0 if run.ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
