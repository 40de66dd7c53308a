"""Zero downtime: background refresh, retries, bounded endpoint load, re-authorization, hooks."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

import aioamztoken as at
from aioamztoken.testing import AmazonEmulator

from .conftest import ManagerFactory
from .test_manager import seed


async def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    """Poll ``predicate`` (bounded) until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def test_background_refresh_happens_without_any_caller(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    emulator.token_lifetime = 2.0
    mgr = make_manager(refresh_buffer=1.0)
    await mgr.add_account("acct", emulator.issue_refresh_token("acct"))
    first = await mgr.get_access_token("acct")
    await wait_until(lambda: emulator.refresh_grants >= 3, timeout=8)
    # Nobody called; the cached token moved on by itself and is the emulator's current one.
    token = await mgr.get_access_token("acct")
    assert token != first
    assert emulator.refresh_grants >= 3


async def test_background_refresh_lands_inside_the_jittered_window(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    emulator.token_lifetime = 4.0
    mgr = make_manager(refresh_buffer=2.0)
    accounts = [f"a{n}" for n in range(12)]
    issued: dict[str, float] = {}
    for account in accounts:
        await mgr.add_account(account, emulator.issue_refresh_token(account))
    for account in accounts:
        issued[account] = time.monotonic()
        await mgr.get_access_token(account)
    await wait_until(lambda: emulator.refresh_grants >= 24, timeout=8)
    first_background: dict[str, float] = {}
    for record in emulator.token_log:
        if record.grant_type != "refresh_token" or record.account_id is None:
            continue
        since = record.time - issued[record.account_id]
        if since > 0.5:  # the background one, not the first fetch
            first_background.setdefault(record.account_id, since)
    seconds_after_issue = list(first_background.values())
    assert len(seconds_after_issue) == len(accounts)
    assert seconds_after_issue, "no background refresh seen"
    # expires_at - buffer = 2.0 s after issue; expires_at - buffer/2 = 3.0 s (plus generous slack
    # for a loaded machine: a timer never fires early, but may fire late)
    assert all(1.9 <= o <= 3.8 for o in seconds_after_issue), seconds_after_issue
    assert len({round(o, 2) for o in seconds_after_issue}) > 1  # not all at one instant


async def test_due_but_valid_token_is_served_at_once_while_the_endpoint_fails(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    store = at.MemoryTokenStore()
    current = await seed(emulator, store, "acct", expires_in=200)
    emulator.failure_rate = 1.0
    mgr = make_manager(store=store, refresh_buffer=300)
    started = time.monotonic()
    tokens = await asyncio.gather(*(mgr.get_access_token("acct") for _ in range(50)))
    elapsed = time.monotonic() - started
    assert tokens == [current.access_token] * 50
    # Did not wait for the refresh (it never succeeds: a caller that waited for it would
    # get an error after the 30 s retry budget, not the token).
    assert elapsed < 5.0
    await wait_until(lambda: emulator.token_requests >= 1)
    status = await mgr.status("acct")
    assert status.state is at.AccountState.DUE
    assert status.refreshing


async def test_transient_failures_are_retried_until_success(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    mgr = make_manager()
    await mgr.add_account("acct", emulator.issue_refresh_token("acct"))
    emulator.fail_next(1, status=500)
    emulator.fail_next(
        1, status=502, body="<html><h1>502 Bad Gateway</h1></html>", content_type="text/html"
    )
    emulator.fail_next(1, status=503)
    token = await mgr.get_access_token("acct")
    assert token == emulator.current_access_token("acct")
    assert emulator.token_requests == 4


async def test_429_waits_for_retry_after(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    mgr = make_manager()
    await mgr.add_account("acct", emulator.issue_refresh_token("acct"))
    emulator.fail_next(1, status=429, body="", retry_after=1)
    started = time.monotonic()
    await mgr.get_access_token("acct")
    assert time.monotonic() - started >= 0.95
    assert emulator.token_requests == 2


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (400, '{"error":"invalid_grant"}', at.InvalidGrantError),
        (401, '{"error":"invalid_client"}', at.InvalidClientError),
        (400, '{"error":"invalid_request"}', at.TokenRefreshError),
        (403, "<html>forbidden</html>", at.TokenRefreshError),
    ],
)
async def test_refusals_are_never_retried(
    emulator: AmazonEmulator,
    make_manager: ManagerFactory,
    status: int,
    body: str,
    kind: type[Exception],
) -> None:
    mgr = make_manager()
    await mgr.add_account("acct", emulator.issue_refresh_token("acct"))
    emulator.fail_next(1, status=status, body=body)
    with pytest.raises(kind):
        await mgr.get_access_token("acct")
    assert emulator.token_requests == 1


async def test_retry_budget_gives_up_with_the_last_status(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    mgr = make_manager(max_retries=3)
    await mgr.add_account("acct", emulator.issue_refresh_token("acct"))
    emulator.fail_next(10, status=503)
    with pytest.raises(at.TokenEndpointError) as info:
        await mgr.get_access_token("acct")
    assert info.value.status == 503
    assert info.value.attempts == 3
    assert emulator.token_requests == 3


async def test_retry_time_budget_is_configurable(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    mgr = make_manager(retry_budget=1.0, max_retries=100)
    await mgr.add_account("acct", emulator.issue_refresh_token("acct"))
    emulator.failure_rate = 1.0
    started = time.monotonic()
    with pytest.raises(at.TokenEndpointError):
        await mgr.get_access_token("acct")
    assert time.monotonic() - started < 5.0
    assert 2 <= emulator.token_requests < 100


async def test_request_timeout_is_retried_and_mapped(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    mgr = make_manager(request_timeout=0.2, max_retries=2)
    await mgr.add_account("acct", emulator.issue_refresh_token("acct"))
    emulator.latency = 1.0
    with pytest.raises(at.TokenEndpointError, match="did not answer") as info:
        await mgr.get_access_token("acct")
    assert info.value.status is None
    assert info.value.attempts == 2


@pytest.mark.parametrize("cap", [3, 10])
async def test_token_requests_in_flight_never_exceed_the_cap(
    emulator: AmazonEmulator, make_manager: ManagerFactory, cap: int
) -> None:
    mgr = make_manager(max_concurrent_refreshes=cap)
    accounts = [f"a{n}" for n in range(30)]
    for account in accounts:
        await mgr.add_account(account, emulator.issue_refresh_token(account))
    emulator.latency = 0.05
    tokens = await asyncio.gather(*(mgr.get_access_token(a) for a in accounts))
    assert len(set(tokens)) == 30  # every queued caller was served, none failed
    assert emulator.max_in_flight == cap


async def test_invalid_grant_marks_the_account_until_a_new_refresh_token_arrives(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    mgr = make_manager()
    await mgr.add_account("acct", emulator.issue_refresh_token("acct"))
    await mgr.get_access_token("acct")
    emulator.revoke("acct")
    with pytest.raises(at.InvalidGrantError):
        await mgr.refresh("acct")
    assert emulator.token_requests == 2
    for call in (mgr.get_access_token, mgr.refresh, mgr.get_token):
        with pytest.raises(at.InvalidGrantError, match="re-authorization"):
            await call("acct")
    assert emulator.token_requests == 2  # no more requests while it needs re-authorization
    status = await mgr.status("acct")
    assert status.state is at.AccountState.NEEDS_REAUTH
    assert status.last_error
    assert "InvalidGrantError" in status.last_error
    await mgr.add_account("acct", emulator.issue_refresh_token("acct"))
    assert (await mgr.status("acct")).state is at.AccountState.EXPIRED
    assert await mgr.get_access_token("acct") == emulator.current_access_token("acct")
    assert (await mgr.status("acct")).state is at.AccountState.FRESH


async def test_code_exchange_clears_the_reauth_state(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    mgr = make_manager()
    await mgr.add_account("acct", "Atzr|revoked")
    with pytest.raises(at.InvalidGrantError):
        await mgr.get_access_token("acct")
    code = emulator.issue_code("acct", redirect_uri="http://localhost/cb")
    await mgr.exchange_code("acct", code, redirect_uri="http://localhost/cb")
    assert await mgr.get_access_token("acct") == emulator.current_access_token("acct")


async def test_reauth_state_notices_a_refresh_token_added_by_another_process(
    emulator: AmazonEmulator, make_manager: ManagerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aioamztoken import _manager

    monkeypatch.setattr(_manager, "REAUTH_RECHECK_INTERVAL", 0.0)
    store = at.MemoryTokenStore()
    mgr = make_manager(store=store)
    await mgr.add_account("acct", "Atzr|revoked")
    with pytest.raises(at.InvalidGrantError):
        await mgr.get_access_token("acct")
    with pytest.raises(at.InvalidGrantError):  # the store still holds the rejected one
        await mgr.get_access_token("acct")
    assert emulator.token_requests == 1
    # Another process (the CLI's `login`, say) writes a new refresh token into the store.
    await store.save("acct", at.Token("", emulator.issue_refresh_token("acct"), 0))
    assert await mgr.get_access_token("acct") == emulator.current_access_token("acct")


async def test_hooks_sync_and_async_are_called_once_per_event(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    calls: list[tuple[str, str, Any]] = []

    def on_refresh(account: str, token: at.Token) -> None:
        calls.append(("refresh", account, token.access_token))

    async def on_error(account: str, exc: BaseException) -> None:
        await asyncio.sleep(0)
        calls.append(("error", account, type(exc)))

    async def on_reauth(account: str) -> None:
        calls.append(("reauth", account, None))

    mgr = make_manager(
        on_refresh=on_refresh,
        on_refresh_error=on_error,
        on_reauth_required=on_reauth,
        max_retries=1,
    )
    await mgr.add_account("acct", emulator.issue_refresh_token("acct"))
    tokens = await asyncio.gather(*(mgr.get_access_token("acct") for _ in range(20)))
    assert calls == [("refresh", "acct", tokens[0])]
    emulator.fail_next(1, status=503)
    with pytest.raises(at.TokenEndpointError):
        await mgr.refresh("acct")
    assert calls[-1] == ("error", "acct", at.TokenEndpointError)
    emulator.revoke("acct")
    with pytest.raises(at.InvalidGrantError):
        await mgr.refresh("acct")
    assert calls[-2:] == [("error", "acct", at.InvalidGrantError), ("reauth", "acct", None)]
    assert len(calls) == 4


async def test_a_hook_that_raises_is_logged_and_never_breaks_a_refresh(
    emulator: AmazonEmulator, make_manager: ManagerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    def bad_hook(account: str, token: at.Token) -> None:
        raise RuntimeError("hook bug")

    mgr = make_manager(on_refresh=bad_hook)
    await mgr.add_account("acct", emulator.issue_refresh_token("acct"))
    with caplog.at_level(logging.ERROR, logger="aioamztoken"):
        token = await mgr.get_access_token("acct")
    assert token == emulator.current_access_token("acct")
    assert any("on_refresh hook raised RuntimeError" in r.getMessage() for r in caplog.records)


async def test_audit_log_has_one_line_per_refresh_with_outcome_duration_attempts(
    emulator: AmazonEmulator, make_manager: ManagerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="aioamztoken")
    mgr = make_manager()
    await mgr.add_account("acct", emulator.issue_refresh_token("acct"))
    emulator.fail_next(1, status=503)
    await asyncio.gather(*(mgr.get_access_token("acct") for _ in range(10)))
    audit = [
        r
        for r in caplog.records
        if r.name == "aioamztoken.audit" and r.getMessage().startswith("refresh ")
    ]
    assert len(audit) == 1
    line = audit[0].getMessage()
    assert audit[0].levelno == logging.INFO
    assert "account='acct'" in line
    assert "outcome=ok" in line
    assert "attempts=2" in line
    assert "duration_ms=" in line
    debug = [r.getMessage() for r in caplog.records if r.name == "aioamztoken.http"]
    assert any("answered 503" in m for m in debug)
    assert any("retrying in" in m for m in debug)
    code = emulator.issue_code("b", redirect_uri="http://localhost/cb")
    await mgr.exchange_code("b", code, redirect_uri="http://localhost/cb")
    assert any(
        r.getMessage().startswith("code-exchange account='b' outcome=ok") for r in caplog.records
    )


def test_redacting_filter_masks_tokens_from_elsewhere() -> None:
    record = logging.LogRecord(
        "other",
        logging.DEBUG,
        __file__,
        1,
        "sent Authorization: Bearer Atza|abc.def with refresh_token=Atzr|xyz&client_secret=shh %s",
        ("and &code=ANcode123",),
        None,
    )
    at.RedactingFilter(secrets=["my-extra-secret"]).filter(record)
    text = record.getMessage()
    for secret in ("Atza|abc.def", "Atzr|xyz", "shh", "ANcode123"):
        assert secret not in text
    assert "[redacted]" in text


async def test_aclose_stops_timers_and_background_refreshes(
    emulator: AmazonEmulator,
) -> None:
    emulator.token_lifetime = 3.0
    store = at.MemoryTokenStore()
    mgr = at.AsyncTokenManager(
        emulator.client_id,
        emulator.client_secret,
        store=store,
        token_url=emulator.token_url,
        refresh_buffer=1.4,
    )
    async with mgr:
        for n in range(20):
            await mgr.add_account(f"a{n}", emulator.issue_refresh_token(f"a{n}"))
            await mgr.get_access_token(f"a{n}")
        emulator.latency = 1.0  # a background refresh may be in flight when we leave
        await asyncio.sleep(1.6)
    # aclose() let the requests already sent finish: the emulator has answered (and
    # counted) every one of them, so nothing sent before the close is counted after it.
    assert emulator.in_flight == 0
    requests = emulator.token_requests
    await asyncio.sleep(2.0)
    assert emulator.token_requests == requests  # no timer fired after close


def test_redacting_filter_masks_tracebacks_and_survives_broken_records() -> None:
    try:
        raise RuntimeError("upstream said: refresh_token=Atzr|leaked")
    except RuntimeError:
        import sys

        exc_info = sys.exc_info()
    record = logging.LogRecord("other", logging.ERROR, __file__, 1, "failed", None, exc_info)
    assert at.RedactingFilter().filter(record)
    assert record.exc_text is not None
    assert "Atzr|leaked" not in record.exc_text
    assert "RuntimeError" in record.exc_text
    # Formatted again (a second handler): still clean.
    assert at.RedactingFilter().filter(record)
    assert "Atzr|leaked" not in (record.exc_text or "")
    broken = logging.LogRecord("other", logging.INFO, __file__, 1, "%d items", ("x",), None)
    assert at.RedactingFilter().filter(broken)  # never drops a record, even a broken one
