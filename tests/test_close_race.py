"""Closing a manager right after a background refresh was started: the refresh task is
cancelled before it ever ran, and nothing is left behind (no coroutine never awaited)."""

from __future__ import annotations

import gc
import time
import warnings

import aioamztoken as at
from aioamztoken.testing import AmazonEmulator


async def test_closing_before_a_started_refresh_ran_leaves_no_coroutine_unawaited(
    emulator: AmazonEmulator,
) -> None:
    store = at.MemoryTokenStore()
    token = at.Token(
        emulator.issue_access_token("acct", lifetime=100),
        emulator.issue_refresh_token("acct"),
        time.time() + 100,
    )
    await store.save("acct", token)
    mgr = at.AsyncTokenManager(
        emulator.client_id,
        emulator.client_secret,
        store=store,
        token_url=emulator.token_url,
        refresh_buffer=300,  # due on arrival, but valid: served while it is refreshed
        auto_refresh=False,  # no timer: the second call starts the refresh
    )
    assert await mgr.get_access_token("acct") == token.access_token
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # Served at once; the refresh task it started has not run yet when we close.
        assert await mgr.get_access_token("acct") == token.access_token
        await mgr.aclose()
        gc.collect()
    assert [str(w.message) for w in caught] == []
    assert emulator.token_requests == 0
