"""The examples run against the emulator and do what they say."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import pytest

import aioamztoken as at
from aioamztoken.testing import AmazonEmulator

from .conftest import ManagerFactory

ROOT = Path(__file__).resolve().parent.parent
PIPELINE = ROOT / "examples" / "report_pipeline.py"
AMAZON_HEADERS = (
    "Authorization",
    "Amazon-Advertising-API-ClientId",
    "Amazon-Advertising-API-Scope",
)


@pytest.fixture(scope="module")
def pipeline() -> ModuleType:
    spec = importlib.util.spec_from_file_location("report_pipeline", PIPELINE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


async def accounts(emulator: AmazonEmulator, mgr: at.AsyncTokenManager, count: int) -> list[str]:
    names = [f"acct-{n}" for n in range(count)]
    for name in names:
        await mgr.add_account(name, emulator.issue_refresh_token(name))
    return names


async def test_pipeline_fetches_every_profiles_report_and_s3_never_sees_the_token(
    emulator: AmazonEmulator, make_manager: ManagerFactory, pipeline: ModuleType
) -> None:
    emulator.report_polls = 3
    mgr = make_manager()
    names = await accounts(emulator, mgr, 3)
    results = await pipeline.run_pipeline(
        mgr, names, base_url=emulator.api_url, origins=[emulator.api_url], poll_interval=0.01
    )
    assert len(results) == 6  # two profiles per account
    assert {r.account_id for r in results} == set(names)
    assert len({r.profile_id for r in results}) == 6
    for result in results:
        assert result.polls == 3
        assert len(result.rows) == emulator.report_rows
        assert set(result.rows[0]) == set(pipeline.COLUMNS)
        assert result.impressions > 0
        assert emulator.report_status(result.report_id) == "COMPLETED"
    assert emulator.reports_created == 6
    # Amazon saw every Ads API call signed, each with the scope of its own profile.
    for record in emulator.api_log:
        assert record.status == 200
        assert record.headers["Authorization"].startswith("Bearer Atza|")
        assert record.headers["Amazon-Advertising-API-ClientId"] == emulator.client_id
    creations = [r for r in emulator.api_log if r.method == "POST"]
    assert sorted(r.headers["Amazon-Advertising-API-Scope"] for r in creations) == sorted(
        r.profile_id for r in results
    )
    # S3 got every download, none with a bearer or any Amazon header.
    assert [r.status for r in emulator.download_log] == [200] * 6
    for download in emulator.download_log:
        assert not any(name in download.headers for name in AMAZON_HEADERS)
    assert emulator.token_requests == 3


async def test_polls_that_outlive_a_token_carry_the_new_one(
    make_manager: ManagerFactory, pipeline: ModuleType
) -> None:
    async with AmazonEmulator(token_lifetime=1.0) as emulator:
        emulator.report_polls = 8
        mgr = make_manager(token_url=emulator.token_url)
        names = await accounts(emulator, mgr, 2)
        results = await pipeline.run_pipeline(
            mgr, names, base_url=emulator.api_url, origins=[emulator.api_url], poll_interval=0.15
        )
        assert len(results) == 4
        tokens: dict[str, set[str]] = defaultdict(set)
        for record in emulator.api_log:
            if record.path.startswith("/reporting/reports/") and record.status == 200:
                tokens[record.path].add(record.headers["Authorization"])
        assert len(tokens) == 4
        # Each report's polls span more than a token's life: they carry more than one.
        assert all(len(seen) >= 2 for seen in tokens.values())
        assert emulator.token_requests >= 4
        assert all("Authorization" not in r.headers for r in emulator.download_log)


async def test_tokens_amazon_rejects_mid_poll_are_recovered_with_one_refresh_per_account(
    emulator: AmazonEmulator, make_manager: ManagerFactory, pipeline: ModuleType
) -> None:
    emulator.report_polls = 4
    mgr = make_manager()
    names = await accounts(emulator, mgr, 3)

    async def expire_once_reports_exist() -> None:
        while emulator.reports_created < 6:
            await asyncio.sleep(0.005)
        emulator.expire_access_tokens()

    expiring = asyncio.create_task(expire_once_reports_exist())
    results = await pipeline.run_pipeline(
        mgr, names, base_url=emulator.api_url, origins=[emulator.api_url], poll_interval=0.05
    )
    await asyncio.wait_for(expiring, 1)
    assert len(results) == 6
    trace = mgr.trace_config()
    rejected = [r for r in emulator.api_log if r.status == 401]
    # The next poll of each report carried the token Amazon expired, unless its sibling
    # profile's poll had already got the account a new one.
    assert 3 <= len(rejected) <= 6
    assert (trace.rejected, trace.retried) == (len(rejected), len(rejected))
    assert all(emulator.token_requests_for(name) == 2 for name in names)
    assert all("Authorization" not in r.headers for r in emulator.download_log)


async def test_throttled_calls_wait_as_told_and_go_on(
    emulator: AmazonEmulator, make_manager: ManagerFactory, pipeline: ModuleType
) -> None:
    emulator.report_polls = 2
    mgr = make_manager()
    names = await accounts(emulator, mgr, 1)
    emulator.api_fail_next(3, status=429, retry_after=0)
    results = await pipeline.run_pipeline(
        mgr, names, base_url=emulator.api_url, origins=[emulator.api_url], poll_interval=0.01
    )
    assert len(results) == 2
    assert [r.status for r in emulator.api_log].count(429) == 3


async def test_an_account_that_needs_reauthorization_stops_the_pipeline_with_a_typed_error(
    emulator: AmazonEmulator, make_manager: ManagerFactory, pipeline: ModuleType
) -> None:
    mgr = make_manager()
    names = await accounts(emulator, mgr, 2)
    emulator.revoke(names[1])
    with pytest.raises(at.InvalidGrantError):
        await pipeline.run_pipeline(
            mgr, names, base_url=emulator.api_url, origins=[emulator.api_url], poll_interval=0.01
        )


async def test_main_runs_the_demo_and_prints_a_summary(
    pipeline: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await pipeline.main(["--accounts", "2", "--polls", "3", "--poll-interval", "0.05"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "2 accounts, 4 profiles, 4 reports" in out
    assert "with an Authorization header: 0" in out
    assert out.rstrip().endswith("OK")


def test_the_script_runs_against_the_emulator_and_exits_0() -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-W", "error", str(PIPELINE)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "8 reports" in done.stdout
    assert "with an Authorization header: 0" in done.stdout
    assert "Atza|" not in done.stdout + done.stderr
    assert done.stdout.rstrip().endswith("OK")


# -- the emulator's reports, as the pipeline relies on them ----------------------------


async def test_emulated_reports_go_pending_processing_completed_and_check_their_profile(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    emulator.report_polls = 3
    mgr = make_manager()
    await mgr.add_account("acct", emulator.issue_refresh_token("acct"))
    mine, other = emulator.profile_ids("acct")
    stranger = emulator.profile_ids("someone-else")[0]
    body = {"configuration": {"reportTypeId": "spCampaigns", "format": "GZIP_JSON"}}
    url = f"{emulator.api_url}/reporting/reports"

    async def status_of(http: aiohttp.ClientSession, report_id: str) -> tuple[int, Any]:
        async with http.get(f"{url}/{report_id}") as resp:
            return resp.status, await resp.json()

    async with mgr.session("acct", base_url=emulator.api_url, origins=[emulator.api_url]) as http:
        async with http.post(url, json=body) as resp:
            assert resp.status == 400  # no profile scope
        async with http.post(
            url, json=body, headers={"Amazon-Advertising-API-Scope": stranger}
        ) as resp:
            assert resp.status == 403
        async with http.post(
            url, data="{not json", headers={"Amazon-Advertising-API-Scope": mine}
        ) as resp:
            assert resp.status == 400
    async with mgr.session(
        "acct", profile_id=mine, base_url=emulator.api_url, origins=[emulator.api_url]
    ) as http:
        async with http.post(url, json=body) as resp:
            created = await resp.json()
        assert created["status"] == "PENDING"
        assert created["url"] is None
        statuses = [(await status_of(http, created["reportId"]))[1] for _ in range(3)]
        assert [s["status"] for s in statuses] == ["PENDING", "PROCESSING", "COMPLETED"]
        done = statuses[-1]
        assert done["url"].startswith(emulator.download_url + "/")
        assert done["fileSize"] > 0
        assert (await status_of(http, "no-such-report"))[0] == 404
        async with http.get(done["url"].replace("X-Amz-Signature=", "X-Amz-Signature=0")) as resp:
            assert resp.status == 403
        emulator.report_url_lifetime = 0  # URLs handed out from now on have expired
        expired = (await status_of(http, created["reportId"]))[1]["url"]
        async with http.get(expired) as resp:
            assert resp.status == 403
            assert "expired" in await resp.text()
    async with mgr.session(
        "acct", profile_id=other, base_url=emulator.api_url, origins=[emulator.api_url]
    ) as http:
        assert (await status_of(http, created["reportId"]))[0] == 404  # not this profile's
    assert emulator.report_status(created["reportId"]) == "COMPLETED"
    assert emulator.reports_created == 1
