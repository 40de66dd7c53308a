"""Client credentials: several secrets during a rotation, swapped at run time, and HTTP
Basic client authentication, against the emulator told which secrets and methods it takes."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from urllib.parse import parse_qs, unquote_plus

import aiohttp
import pytest

from aioamztoken import (
    AsyncTokenManager,
    BlockingTokenManager,
    InvalidClientError,
    MemoryTokenStore,
    RedactingFilter,
)
from aioamztoken._http import ClientSecrets, RetryPolicy, TokenEndpoint
from aioamztoken._lwa import basic_authorization, code_request, refresh_request
from aioamztoken.testing import AmazonEmulator

OLD = "amzn1.oa2-cs.v1.0ld0ld0ld"
NEW = "amzn1.oa2-cs.v1.1e11e11e1"
OTHER = "amzn1.oa2-cs.v1.5ca1ab1e"


def manager(
    amazon: AmazonEmulator, secrets: str | list[str], **options: object
) -> AsyncTokenManager:
    options.setdefault("store", MemoryTokenStore())
    return AsyncTokenManager(
        amazon.client_id,
        secrets,
        token_url=amazon.token_url,
        **options,  # type: ignore[arg-type]
    )


def all_log_text(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------ sans-io


def test_basic_credentials_are_form_encoded_before_base64_as_rfc_6749_says() -> None:
    header = basic_authorization("my id:1", "s3cr+t/ é")
    scheme, _, encoded = header.partition(" ")
    assert scheme == "Basic"
    login, _, password = base64.b64decode(encoded).decode("ascii").partition(":")
    assert (login, password) == ("my+id%3A1", "s3cr%2Bt%2F+%C3%A9")
    assert (unquote_plus(login), unquote_plus(password)) == ("my id:1", "s3cr+t/ é")


@pytest.mark.parametrize("build", ["refresh", "code"])
def test_basic_requests_carry_no_credentials_in_the_body(build: str) -> None:
    if build == "refresh":
        request = refresh_request("https://t/", "cid", "csecret", "Atzr|r", client_auth="basic")
    else:
        request = code_request(
            "https://t/", "cid", "csecret", "ANc", "https://r/", client_auth="basic"
        )
    form = parse_qs(request.body.decode())
    assert "client_id" not in form
    assert "client_secret" not in form
    assert request.headers["Authorization"] == basic_authorization("cid", "csecret")
    resigned = request.with_client_secret("other")
    assert resigned.headers["Authorization"] == basic_authorization("cid", "other")
    assert "csecret" not in repr(request)
    assert "other" not in repr(resigned)


def test_post_requests_carry_the_credentials_in_the_body_only() -> None:
    request = refresh_request("https://t/", "cid", "csecret", "Atzr|r").with_client_secret("s2")
    form = parse_qs(request.body.decode())
    assert form["client_id"] == ["cid"]
    assert form["client_secret"] == ["s2"]
    assert "Authorization" not in request.headers


def test_an_unknown_client_auth_method_is_refused() -> None:
    with pytest.raises(ValueError, match="client_auth"):
        refresh_request("https://t/", "cid", "cs", "Atzr|r", client_auth="digest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="client_auth"):
        AsyncTokenManager("cid", "cs", store=MemoryTokenStore(), client_auth="digest")  # type: ignore[arg-type]


@pytest.mark.parametrize("secrets", [[], [""], ["ok", ""], "", [None]])
def test_empty_or_non_string_secrets_are_refused(secrets: object) -> None:
    with pytest.raises(ValueError, match="client_secret"):
        AsyncTokenManager("cid", secrets, store=MemoryTokenStore())  # type: ignore[arg-type]


def test_secrets_are_tried_preferred_first_and_never_shown() -> None:
    secrets = ClientSecrets([NEW, OLD, NEW])
    assert len(secrets) == 2
    assert secrets.order() == [NEW, OLD]
    secrets.accepted(OLD)
    assert secrets.order() == [OLD, NEW]
    assert secrets.number(OLD) == 2
    assert NEW not in repr(secrets)
    assert OLD not in repr(secrets)
    secrets.replace([OTHER, OLD])
    assert secrets.order() == [OTHER, OLD]  # a new list: its order wins
    secrets.replace(NEW)
    assert secrets.order() == [NEW]
    assert secrets.number(OLD) == 0
    secrets.accepted(OLD)  # no longer listed: ignored
    assert secrets.preferred == NEW


# ------------------------------------------------------------------------------ rotation


async def test_old_then_new_costs_two_requests_once_and_one_ever_after(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="aioamztoken")
    async with AmazonEmulator(client_secrets=[NEW]) as amazon:
        refresh_token = amazon.issue_refresh_token("acme")
        async with manager(amazon, [OLD, NEW]) as mgr:
            await mgr.add_account("acme", refresh_token)
            await mgr.add_account("globex", amazon.issue_refresh_token("globex"))
            await mgr.refresh("acme")
            assert amazon.token_requests == 2
            assert [r.status for r in amazon.token_log] == [401, 200]
            for expected in (3, 4, 5):
                await mgr.refresh("acme")
                assert amazon.token_requests == expected
            # Every account uses the accepted secret from then on.
            await mgr.refresh("globex")
            assert amazon.token_requests == 6
            assert amazon.refresh_grants == 5
    audit = [r.getMessage() for r in caplog.records if r.name == "aioamztoken.audit"]
    accepted = [m for m in audit if "client-secret" in m]
    assert len(accepted) == 1
    assert "secret #2 of 2 was accepted after #1 was rejected" in accepted[0]
    assert [r.levelno for r in caplog.records if "client-secret" in r.getMessage()] == [
        logging.INFO
    ]
    text = all_log_text(caplog)
    assert OLD not in text
    assert NEW not in text


async def test_every_secret_rejected_raises_invalid_client_saying_how_many(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="aioamztoken")
    async with AmazonEmulator(client_secrets=[OTHER]) as amazon, manager(amazon, [NEW, OLD]) as mgr:
        await mgr.add_account("acme", amazon.issue_refresh_token("acme"))
        started = time.monotonic()
        with pytest.raises(InvalidClientError) as caught:
            await mgr.get_access_token("acme")
        assert time.monotonic() - started < 10  # no backoff between secrets
    error = caught.value
    assert error.secrets_tried == 2
    assert "all 2 client secrets" in str(error)
    assert error.attempts == 2
    assert amazon.token_requests == 2  # never retried
    assert error.__cause__ is None
    assert error.__context__ is None or NEW not in str(error.__context__)
    for text in (str(error), repr(error), all_log_text(caplog)):
        assert NEW not in text
        assert OLD not in text


async def test_a_single_rejected_secret_says_one_was_tried(emulator: AmazonEmulator) -> None:
    async with manager(emulator, "wrong-secret") as mgr:
        await mgr.add_account("acme", emulator.issue_refresh_token("acme"))
        with pytest.raises(InvalidClientError, match="tried 1 client secret") as caught:
            await mgr.refresh("acme")
    assert caught.value.secrets_tried == 1
    assert emulator.token_requests == 1


async def test_a_rejected_secret_does_not_spend_the_authorization_code() -> None:
    async with AmazonEmulator(client_secrets=[NEW]) as amazon:
        code = amazon.issue_code("acme", redirect_uri="https://app.example/cb")
        async with manager(amazon, [OLD, NEW]) as mgr:
            token = await mgr.exchange_code("acme", code, redirect_uri="https://app.example/cb")
            assert token.access_token
            assert amazon.code_grants == 1
            assert [r.status for r in amazon.token_log] == [401, 200]
            await mgr.refresh("acme")
            assert amazon.token_requests == 3


async def test_set_client_secrets_mid_run_causes_no_caller_error() -> None:
    """A rotation as Amazon runs it: the new secret starts working alongside the old, the
    app is told, then the old stops working. Callers never see an error."""
    errors: list[BaseException] = []
    served = 0
    async with AmazonEmulator(client_secret=OLD, token_lifetime=3600) as amazon:
        accounts = [f"acct-{n}" for n in range(5)]
        async with manager(amazon, OLD, refresh_buffer=0, expiry_margin=0) as mgr:
            for account in accounts:
                await mgr.add_account(account, amazon.issue_refresh_token(account))
            stop = asyncio.Event()

            async def caller(account: str) -> None:
                nonlocal served
                while not stop.is_set():
                    try:
                        await mgr.refresh(account)
                        assert await mgr.get_access_token(account)
                        served += 1
                    except Exception as exc:  # what a caller would see
                        errors.append(exc)
                    await asyncio.sleep(0.01)

            tasks = [asyncio.create_task(caller(a)) for a in accounts]
            await asyncio.sleep(0.3)
            amazon.client_secrets = [OLD, NEW]  # the new secret is issued: both work
            await asyncio.sleep(0.2)
            before = amazon.token_requests
            cached = [mgr.cached_access_token(a) for a in accounts]
            mgr.set_client_secrets([NEW, OLD])
            # Tokens are untouched: the cache serves the same tokens at once.
            assert [mgr.cached_access_token(a) for a in accounts] == cached
            swapped = len(amazon.token_log)
            await asyncio.sleep(0.2)
            amazon.client_secrets = [NEW]  # the grace period ends
            await asyncio.sleep(0.3)
            stop.set()
            await asyncio.gather(*tasks)
            assert amazon.token_requests > before
    assert errors == []
    assert served > len(accounts) * 3
    # Once the requests in flight at the swap were answered, the new secret went first.
    assert all(r.status == 200 for r in amazon.token_log[swapped + len(accounts) :])


async def test_set_client_secrets_keeps_cached_tokens_and_makes_no_request(
    emulator: AmazonEmulator,
) -> None:
    async with manager(emulator, emulator.client_secret) as mgr:
        await mgr.add_account("acme", emulator.issue_refresh_token("acme"))
        access = await mgr.get_access_token("acme")
        requests = emulator.token_requests
        mgr.set_client_secrets([OTHER, emulator.client_secret])
        assert mgr.cached_access_token("acme") == access
        assert await mgr.get_access_token("acme") == access
        assert emulator.token_requests == requests
        await mgr.refresh("acme")  # OTHER is refused, the listed real one accepted
        assert [r.status for r in emulator.token_log[requests:]] == [401, 200]
        with pytest.raises(ValueError, match="client_secret"):
            mgr.set_client_secrets([])


async def test_a_request_refused_after_a_swap_tries_the_new_secrets() -> None:
    """set_client_secrets while a request signed with the old secret is in flight: that
    request's refusal moves on to the new list."""
    async with AmazonEmulator(client_secrets=[NEW]) as amazon:
        amazon.latency = 0.3
        async with manager(amazon, OLD) as mgr:
            await mgr.add_account("acme", amazon.issue_refresh_token("acme"))
            pending = asyncio.create_task(mgr.refresh("acme"))
            await asyncio.sleep(0.1)
            mgr.set_client_secrets(NEW)
            token = await pending
            assert token.access_token
    assert [r.status for r in amazon.token_log] == [401, 200]


def test_blocking_manager_takes_several_secrets_and_swaps_them() -> None:
    with AmazonEmulator.running_in_thread(client_secrets=[NEW]) as amazon:
        refresh_token = amazon.issue_refresh_token("acme")
        with BlockingTokenManager(
            amazon.client_id, [OLD, NEW], store=MemoryTokenStore(), token_url=amazon.token_url
        ) as mgr:
            mgr.add_account("acme", refresh_token)
            assert mgr.get_access_token("acme")
            assert amazon.token_requests == 2
            mgr.set_client_secrets([OTHER])
            with pytest.raises(InvalidClientError):
                mgr.refresh("acme")
            amazon.client_secrets = [OTHER]
            # A refusal is answered again at once until its backoff (1 s after the first
            # refusal, issue 11) ends; then the accepted secret is used.
            with pytest.raises(InvalidClientError):
                mgr.refresh("acme")
            time.sleep(1.5)
            mgr.refresh("acme")
            with pytest.raises(ValueError, match="client_secret"):
                mgr.set_client_secrets([])
    assert amazon.refresh_grants == 2


# ------------------------------------------------------------------------------ Basic


async def test_basic_client_auth_against_a_server_that_accepts_only_basic() -> None:
    async with AmazonEmulator(client_auth_methods=["basic"]) as amazon:
        code = amazon.issue_code("acme", redirect_uri="https://app.example/cb")
        async with manager(amazon, amazon.client_secret, client_auth="basic") as mgr:
            await mgr.exchange_code("acme", code, redirect_uri="https://app.example/cb")
            await mgr.refresh("acme")
        assert amazon.code_grants == 1
        assert amazon.refresh_grants == 1
        for record in amazon.token_log:
            assert record.status == 200
            assert record.headers["Authorization"] == basic_authorization(
                amazon.client_id, amazon.client_secret
            )
        # The same credentials in the form are refused there.
        async with manager(amazon, amazon.client_secret) as mgr:
            await mgr.add_account("acme", amazon.issue_refresh_token("acme"))
            with pytest.raises(InvalidClientError):
                await mgr.refresh("acme")


async def test_basic_client_auth_rotates_secrets_too() -> None:
    secret = "new secret: with+reserved/chars"
    amazon = AmazonEmulator(client_secrets=[secret], client_auth_methods=["basic"])
    async with amazon, manager(amazon, [OLD, secret], client_auth="basic") as mgr:
        await mgr.add_account("acme", amazon.issue_refresh_token("acme"))
        await mgr.refresh("acme")
        await mgr.refresh("acme")
    assert [r.status for r in amazon.token_log] == [401, 200, 200]


async def test_the_emulator_refuses_two_client_auth_methods_at_once(
    emulator: AmazonEmulator,
) -> None:
    form = {
        "grant_type": "refresh_token",
        "refresh_token": emulator.issue_refresh_token("acme"),
        "client_id": emulator.client_id,
        "client_secret": emulator.client_secret,
    }
    headers = {"Authorization": basic_authorization(emulator.client_id, emulator.client_secret)}
    async with aiohttp.ClientSession() as http:
        async with http.post(emulator.token_url, data=form, headers=headers) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"] == "invalid_request"
        emulator.client_auth_methods = frozenset({"post"})
        del form["client_secret"]
        async with http.post(emulator.token_url, data=form, headers=headers) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"] == "invalid_client"


def test_the_emulator_refuses_unknown_client_auth_methods() -> None:
    with pytest.raises(ValueError, match="client_auth_methods"):
        AmazonEmulator(client_auth_methods=["digest"])
    with pytest.raises(ValueError, match="client_auth_methods"):
        AmazonEmulator(client_auth_methods=[])


def test_the_redacting_filter_masks_basic_credentials_but_not_prose() -> None:
    header = basic_authorization("amzn1.application-oa2-client.abc", "amzn1.oa2-cs.v1.dead")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "sent %s", (header,), None)
    RedactingFilter().filter(record)
    assert header.split()[1] not in record.getMessage()
    assert "Basic [redacted]" in record.getMessage()
    prose = "HTTP Basic Authentication is what the server wants"
    record = logging.LogRecord("x", logging.INFO, __file__, 1, prose, None, None)
    RedactingFilter().filter(record)
    assert record.getMessage() == prose


async def test_a_token_endpoint_without_a_secret_list_sends_the_request_as_built(
    emulator: AmazonEmulator,
) -> None:
    endpoint = TokenEndpoint(session=None, max_concurrent=1, policy=RetryPolicy())
    try:
        request = refresh_request(
            emulator.token_url,
            emulator.client_id,
            emulator.client_secret,
            emulator.issue_refresh_token("acme"),
        )
        token, attempts = await endpoint.request(request, account_id="acme")
    finally:
        await endpoint.aclose()
    assert token.access_token
    assert attempts == 1


async def test_the_emulator_takes_several_secrets_as_client_secret_too() -> None:
    async with AmazonEmulator(client_secret=[NEW, OLD]) as amazon:
        assert amazon.client_secret == NEW
        for secret in (OLD, NEW):
            async with manager(amazon, secret) as mgr:
                await mgr.add_account("acme", amazon.issue_refresh_token("acme"))
                await mgr.refresh("acme")
        amazon.client_secrets = [NEW]
        async with manager(amazon, OLD) as mgr:
            await mgr.add_account("acme", amazon.issue_refresh_token("acme"))
            with pytest.raises(InvalidClientError):
                await mgr.refresh("acme")
    assert [r.status for r in amazon.token_log] == [200, 200, 401]
