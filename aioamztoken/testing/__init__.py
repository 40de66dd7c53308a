"""A loopback emulator of Login with Amazon and the Amazon Ads API, for tests.

:class:`AmazonEmulator` is a real aiohttp server on ``127.0.0.1`` (a free port is
picked). It speaks the LwA token endpoint (``POST /auth/o2/token``), the consent
page (``GET /ap/oa``) and, on the same origin, an Ads API stand-in that checks
bearer tokens the way Amazon does. A browser is shown HTML consent pages with "Allow"
and "Deny" buttons, for the Ads API (``/ap/oa``) and for SP-API on Seller Central
(:attr:`AmazonEmulator.seller_central_url`); other clients are approved at once. It
issues credentials, revokes and expires them,
injects faults and latency, and counts and records every request, so tests assert
what reached "Amazon" instead of mocking calls::

    from aioamztoken.testing import AmazonEmulator

    async def test_profiles_are_listed() -> None:
        async with AmazonEmulator() as amazon, aiohttp.ClientSession() as http:
            refresh_token = amazon.issue_refresh_token("acme")
            form = {
                "grant_type": "refresh_token",
                "refresh_token": refresh_token,
                "client_id": amazon.client_id,
                "client_secret": amazon.client_secret,
            }
            async with http.post(amazon.token_url, data=form) as resp:
                access_token = (await resp.json())["access_token"]
            headers = {
                "Authorization": f"Bearer {access_token}",
                "Amazon-Advertising-API-ClientId": amazon.client_id,
            }
            async with http.get(f"{amazon.api_url}/v2/profiles", headers=headers) as resp:
                assert resp.status == 200
            assert amazon.refresh_grants == 1
            assert amazon.api_requests_for("acme") == 1

It also imitates Amazon's asynchronous reports (v3 ``POST /reporting/reports``, then
``GET /reporting/reports/{reportId}`` until ``COMPLETED``) and serves the finished files
(gzip JSON) from a second origin, :attr:`AmazonEmulator.download_url`, that behaves like
the pre-signed S3 URLs Amazon hands out: it answers 400 to any request that carries an
``Authorization`` header, and records the headers of every request it gets::

    async with AmazonEmulator() as amazon:
        amazon.report_polls = 3        # COMPLETED on the third status poll
        ...                            # create, poll, download (examples/report_pipeline.py)
        assert not any("Authorization" in r.headers for r in amazon.download_log)

It also serves the Selling Partner API on an origin of its own,
:attr:`AmazonEmulator.spapi_url`, which checks ``x-amz-access-token`` and answers 403
with Amazon's bodies (an expired token, a revoked one, a missing role), accepts
Restricted Data Tokens, and serves grantless operations to tokens of the
``client_credentials`` grant, which the token endpoint issues per scope. The unified Ads
API paths (``/adsApi/...``) check their own headers (``Amazon-Ads-ClientId`` and an
account header)::

    async with AmazonEmulator() as amazon:
        amazon.expire_access_tokens("acme")   # the SP-API now answers 403 "expired"
        amazon.spapi_missing_roles.add("/finances/")   # 403 with empty details
        ...
        assert [r.status for r in amazon.spapi_log] == [403, 200]

Synchronous or multi-process tests run it on a thread of its own::

    with AmazonEmulator.running_in_thread(rotate_refresh_tokens=True) as amazon:
        run_the_cron_job(token_url=amazon.token_url)
        assert amazon.token_requests == 1

Concurrency: the server runs on the event loop that called :meth:`AmazonEmulator.start`.
The methods that change state (``issue_*``, ``revoke*``, ``expire_access_tokens``,
``fail_next``, ``spoil_next_answers``, ``api_fail_next``, ``reset_counters``) take an
internal lock and may be called from any thread; counters and logs are plain ints and
lists, safe to read from any thread.
"""

from aioamztoken.testing._emulator import (
    AmazonEmulator,
    ApiRequestRecord,
    DownloadRequestRecord,
    TokenRequestRecord,
)

__all__ = ["AmazonEmulator", "ApiRequestRecord", "DownloadRequestRecord", "TokenRequestRecord"]
