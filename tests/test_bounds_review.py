"""Review of the manager half of issue 11: what the first tests did not look at."""

from __future__ import annotations

import time

import pytest

import aioamztoken as at
from aioamztoken import _sources
from aioamztoken.testing import AmazonEmulator

from .conftest import ManagerFactory


async def test_removed_accounts_leave_no_reauth_warning_and_no_rejection_guard(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    """remove_account forgets the account's re-authorization warning and its shared 401
    guard (they were kept: one entry per removed account, 2,000 of 2,000)."""
    mgr = make_manager(authorization_max_age=365 * 86400.0)
    refresh_token = emulator.issue_refresh_token("shared")
    granted = time.time() - 364 * 86400  # within the warning: a warning is recorded
    for n in range(300):
        account_id = f"acct-{n}"
        await mgr.add_account(account_id, refresh_token, authorized_at=granted)
        await mgr.get_access_token(account_id)
        mgr.token_source(account_id)
        mgr.middleware(account_id)
        await mgr.remove_account(account_id)
    assert mgr._reauth._warned == {}
    assert len(_sources._guards.get(mgr, {})) == 0
    # An account still there keeps its guard (shared by its sources) and its warning.
    await mgr.add_account("kept", refresh_token, authorized_at=granted)
    assert mgr.token_source("kept").guard is mgr.token_source("kept").guard
    assert list(mgr._reauth._warned) == ["kept"]



async def test_set_client_secrets_ends_the_backoff_of_an_invalid_client_refusal(
    emulator: AmazonEmulator,
) -> None:
    """After a refusal of a wrong secret, set_client_secrets(the right one) lets the next
    call through (it got the old refusal again until the backoff ended: 7 s measured
    after 8 s of refusals, up to a minute)."""
    manager = at.AsyncTokenManager(
        emulator.client_id,
        "not-the-secret",
        store=at.MemoryTokenStore(),
        token_url=emulator.token_url,
        min_refresh_interval=60.0,  # the first backoff: a minute
    )
    async with manager:
        await manager.add_account("a", emulator.issue_refresh_token("a"))
        with pytest.raises(at.InvalidClientError):
            await manager.get_access_token("a")
        refused = emulator.token_requests_for("a")
        with pytest.raises(at.InvalidClientError):  # backing off: no new request
            await manager.get_access_token("a")
        assert emulator.token_requests_for("a") == refused
        manager.set_client_secrets(emulator.client_secret)
        assert (await manager.get_access_token("a")).startswith("Atza|")
        assert emulator.token_requests_for("a") == refused + 1
