"""python-amazon-sp-api and python-amazon-ad-api fed by a BlockingTokenManager (the real
packages, against the emulator)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import aioamztoken as at
from aioamztoken.peers import (
    ad_api_client,
    call_with_refresh,
    sp_api_credentials,
    sp_api_token_client,
)
from aioamztoken.testing import AmazonEmulator

sp_api = pytest.importorskip("sp_api.api")
sp_exceptions = pytest.importorskip("sp_api.base.exceptions")
ad_api = pytest.importorskip("ad_api.api")
ad_exceptions = pytest.importorskip("ad_api.base.exceptions")

ACCOUNT = "acme"


@pytest.fixture
def amazon() -> Iterator[AmazonEmulator]:
    with AmazonEmulator.running_in_thread() as emulator:
        yield emulator


@pytest.fixture
def mgr(amazon: AmazonEmulator) -> Iterator[at.BlockingTokenManager]:
    with at.BlockingTokenManager(
        amazon.client_id,
        amazon.client_secret,
        store=at.MemoryTokenStore(),
        token_url=amazon.token_url,
    ) as manager:
        manager.add_account(ACCOUNT, amazon.issue_refresh_token(ACCOUNT))
        manager.get_access_token(ACCOUNT)
        amazon.reset_counters()
        yield manager


@pytest.fixture
def orders(amazon: AmazonEmulator, mgr: at.BlockingTokenManager) -> Iterator[object]:
    with sp_api.Orders(
        credentials=sp_api_credentials(mgr),
        auth_token_client_class=sp_api_token_client(mgr, ACCOUNT),
    ) as client:
        client.endpoint = amazon.spapi_url
        yield client


def test_sp_api_gets_the_managers_token_and_one_retry_for_an_expired_one(
    amazon: AmazonEmulator, mgr: at.BlockingTokenManager, orders: object
) -> None:
    answer = call_with_refresh(mgr, ACCOUNT, lambda: orders.get_orders(CreatedAfter="2025"))  # type: ignore[attr-defined]
    assert answer.payload["account_id"] == ACCOUNT
    assert amazon.spapi_log[-1].headers["x-amz-access-token"] == mgr.get_access_token(ACCOUNT)
    assert amazon.token_requests == 0
    amazon.expire_access_tokens(ACCOUNT)
    call_with_refresh(mgr, ACCOUNT, lambda: orders.get_orders(CreatedAfter="2025"))  # type: ignore[attr-defined]
    assert [r.status for r in amazon.spapi_log] == [200, 403, 200]
    assert amazon.refresh_grants == 1


def test_sp_api_missing_role_is_raised_without_a_refresh(
    amazon: AmazonEmulator, mgr: at.BlockingTokenManager, orders: object
) -> None:
    amazon.spapi_missing_roles.add("/orders/")
    with pytest.raises(sp_exceptions.SellingApiForbiddenException):
        call_with_refresh(mgr, ACCOUNT, lambda: orders.get_orders(CreatedAfter="2025"))  # type: ignore[attr-defined]
    assert amazon.token_requests == 0
    assert amazon.spapi_requests == 1


def test_a_rejection_the_refresh_does_not_cure_is_not_refreshed_again(
    amazon: AmazonEmulator, mgr: at.BlockingTokenManager, orders: object
) -> None:
    amazon.spapi_fail_next(100)  # "expired", whatever the token
    for _ in range(10):
        with pytest.raises(sp_exceptions.SellingApiForbiddenException):
            call_with_refresh(mgr, ACCOUNT, lambda: orders.get_orders(CreatedAfter="2025"))  # type: ignore[attr-defined]
    assert amazon.refresh_grants == 1
    assert amazon.spapi_requests == 11


def test_sp_api_grantless_operations_get_a_grantless_token(
    amazon: AmazonEmulator, mgr: at.BlockingTokenManager
) -> None:
    token_client = sp_api_token_client(mgr, None)
    with sp_api.Notifications(
        credentials=sp_api_credentials(mgr), auth_token_client_class=token_client
    ) as notifications:
        notifications.endpoint = amazon.spapi_url
        answer = notifications.get_destinations()
        assert answer.payload["scope"] == "sellingpartnerapi::notifications"
        notifications.get_destinations()
    assert amazon.client_credentials_grants == 1
    with pytest.raises(ValueError, match="grantless"):
        token_client().get_auth()
    with pytest.raises(NotImplementedError):
        token_client().authorize_auth_code("ANcode")


def test_ad_api_gets_the_managers_token_scope_and_one_retry_for_a_401(
    amazon: AmazonEmulator, mgr: at.BlockingTokenManager
) -> None:
    profiles = ad_api_client(ad_api.Profiles, mgr, ACCOUNT, profile_id=42, endpoint=amazon.api_url)
    answer = call_with_refresh(mgr, ACCOUNT, profiles.list_profiles, api="ads")
    assert len(answer.payload) == 2
    headers = amazon.api_log[-1].headers
    assert headers["Authorization"] == f"Bearer {mgr.get_access_token(ACCOUNT)}"
    assert headers["Amazon-Advertising-API-Scope"] == "42"
    assert headers["Amazon-Advertising-API-ClientId"] == amazon.client_id
    amazon.api_fail_next(1)
    call_with_refresh(mgr, ACCOUNT, profiles.list_profiles, api="ads")
    assert amazon.refresh_grants == 1
    assert [r.status for r in amazon.api_log] == [200, 401, 200]
    amazon.api_fail_next(1, status=500)
    with pytest.raises(ad_exceptions.AdvertisingApiException):
        call_with_refresh(mgr, ACCOUNT, profiles.list_profiles, api="ads")
    assert amazon.refresh_grants == 1


def test_errors_without_a_status_are_raised_as_they_are(mgr: at.BlockingTokenManager) -> None:
    class Odd(Exception):
        code = "x"
        error = object()

    def fail() -> None:
        raise Odd

    with pytest.raises(Odd):
        call_with_refresh(mgr, ACCOUNT, fail)
