"""Regression tests for defects found in review of the signing adapters (issue 13)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import requests

import aioamztoken as at
from aioamztoken.testing import AmazonEmulator

from .conftest import ManagerFactory

ACCOUNT = "review-seller"
LEAKS = (
    "authorization",
    "x-amz-access-token",
    "amazon-advertising-api-clientid",
    "amazon-ads-clientid",
    "amazon-advertising-api-scope",
    "amazon-ads-accountid",
    "amazon-ads-manager-accountid",
)


@pytest.fixture
def amazon() -> Iterator[AmazonEmulator]:
    with AmazonEmulator.running_in_thread(client_id="review-client") as emulator:
        yield emulator


@pytest.fixture
def blocking(amazon: AmazonEmulator) -> Iterator[at.BlockingTokenManager]:
    with at.BlockingTokenManager(
        amazon.client_id,
        amazon.client_secret,
        store=at.MemoryTokenStore(),
        token_url=amazon.token_url,
    ) as manager:
        manager.add_account(ACCOUNT, amazon.issue_refresh_token(ACCOUNT))
        yield manager


def _via(origin: str, target: str) -> str:
    """A URL of ``origin`` that answers 307 to ``target`` once its token checks out."""
    return f"{origin}/emulator/redirect?to={quote(target, safe='')}"


@pytest.mark.parametrize("api", ["ads", "sp-api"])
@pytest.mark.parametrize("hops", [1, 2, 3])
def test_requests_keeps_the_token_off_s3_after_same_origin_hops(
    amazon: AmazonEmulator, blocking: at.BlockingTokenManager, api: str, hops: int
) -> None:
    # requests copies each hop from the previous one and runs no auth for it: a hop to
    # an allowed origin carried the token on, and the next hop to S3 kept it.
    origin = amazon.api_url if api == "ads" else amazon.spapi_url
    s3 = f"{amazon.download_url}/bucket/report-77.gz?X-Amz-Signature=0ff1ce"
    url = s3
    for _ in range(hops):
        url = _via(origin, url)
    ads = api == "ads"
    auth = blocking.requests_auth(
        ACCOUNT,
        api=api,
        profile_id=4242 if ads else None,
        ads_account_id="amzn1.ads-account.g.review" if ads else None,
        manager_account_id="amzn1.ads-manager.review" if ads else None,
        origins=[origin],
    )
    with requests.Session() as session:
        session.auth = auth
        answer = session.get(url, timeout=30)
    # Every hop on the API origin was authenticated (each answered its redirect)...
    log = amazon.api_log if api == "ads" else amazon.spapi_log
    assert [r.status for r in log] == [307] * hops
    # ...and S3 was reached with none of the Amazon headers (the emulator's S3 rejects a
    # bearer with 400; the report key is unknown to it, hence 404).
    assert answer.status_code == 404
    assert len(amazon.download_log) == 1
    received = {name.lower() for name in amazon.download_log[0].headers}
    assert received.isdisjoint(LEAKS), received


def test_requests_keeps_a_callers_header_on_hops_it_added_none_of(
    amazon: AmazonEmulator, blocking: at.BlockingTokenManager
) -> None:
    # Only what the adapter added is taken off a hop: the caller's own headers ride on
    # as requests would send them without the auth.
    origin = amazon.api_url
    s3 = f"{amazon.download_url}/bucket/x?X-Amz-Signature=1"
    with requests.Session() as session:
        session.auth = blocking.requests_auth(ACCOUNT, origins=[origin])
        session.get(
            _via(origin, _via(origin, s3)),
            headers={"Amazon-Advertising-API-Scope": "31337", "X-Trace": "t-1"},
            timeout=30,
        )
    headers = {k.lower(): v for k, v in amazon.download_log[0].headers.items()}
    assert headers["x-trace"] == "t-1"
    assert headers["amazon-advertising-api-scope"] == "31337"
    assert "authorization" not in headers
    assert "amazon-advertising-api-clientid" not in headers


def test_requests_retried_redirect_to_s3_carries_no_client_id(
    amazon: AmazonEmulator, blocking: at.BlockingTokenManager
) -> None:
    # The retry after a 401 re-signs the request; its own redirect to S3 must lose every
    # header of the first signing, not only those the re-signing added.
    blocking.get_access_token(ACCOUNT)
    amazon.expire_access_tokens(ACCOUNT)
    s3 = f"{amazon.download_url}/bucket/y?X-Amz-Signature=2"
    with requests.Session() as session:
        session.auth = blocking.requests_auth(ACCOUNT, profile_id=7, origins=[amazon.api_url])
        session.get(_via(amazon.api_url, s3), timeout=30)
    assert [r.status for r in amazon.api_log] == [401, 307]
    assert amazon.refresh_grants == 2
    received = {name.lower() for name in amazon.download_log[0].headers}
    assert received.isdisjoint(LEAKS), received


def test_a_missing_http_client_extra_names_the_extra_to_install() -> None:
    # Without httpx or requests installed, the adapters used to fail with a bare
    # "No module named 'httpx'": now the error says which extra provides it.
    import subprocess
    import sys

    code = (
        "import sys\n"
        "sys.modules['httpx'] = None\n"
        "sys.modules['requests'] = None\n"
        "import aioamztoken as at\n"
        "mgr = at.AsyncTokenManager('c', 's', store=at.MemoryTokenStore())\n"
        "blocking = at.BlockingTokenManager('c', 's', store=at.MemoryTokenStore())\n"
        "calls = [\n"
        "    lambda: mgr.httpx_auth('a'),\n"
        "    lambda: mgr.grantless_httpx_auth('sellingpartnerapi::notifications'),\n"
        "    lambda: blocking.httpx_auth('a'),\n"
        "    lambda: blocking.requests_auth('a'),\n"
        "]\n"
        "for call in calls:\n"
        "    try:\n"
        "        call()\n"
        "    except ImportError as exc:\n"
        "        print(exc.name, '|', exc)\n"
        "blocking.close()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 4, done.stdout + done.stderr
    for line, extra in zip(lines, ["httpx", "httpx", "httpx", "requests"], strict=True):
        assert line.startswith(f"{extra} | ")
        assert f"pip install 'aioamztoken[{extra}]'" in line


class _Unseekable(io.RawIOBase):
    """A file that can be read once, as a pipe or a socket is."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, buffer: Any) -> int:
        chunk = self._data.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def _multipart_cases(
    tmp_path: Path, files: contextlib.ExitStack
) -> list[tuple[str, Callable[[], Any], bool]]:
    disk = tmp_path / "bids.csv"
    disk.write_bytes(b"kw-from-disk,0.91\n")
    return [
        ("bytes", lambda: ("bids.csv", b"kw-in-memory,0.42\n"), True),
        ("seekable file", lambda: ("bids.csv", files.enter_context(disk.open("rb"))), True),
        ("unseekable file", lambda: ("bids.csv", _Unseekable(b"kw-piped,0.13\n")), False),
    ]


def _check_multipart(amazon: AmazonEmulator, answer: httpx.Response, retried: bool) -> None:
    if retried:
        # Sent again, intact: the emulator echoes the second send's body.
        assert answer.status_code == 200, answer.text
        assert [r.status for r in amazon.api_log] == [401, 200]
        assert amazon.api_log[0].body == amazon.api_log[1].body
        assert b"0." in amazon.api_log[1].body
        assert b'name="campaign"' in amazon.api_log[1].body
    else:
        assert answer.status_code == 401
        assert [r.status for r in amazon.api_log] == [401]


async def test_httpx_async_retries_a_multipart_body_it_can_send_again(
    emulator: AmazonEmulator, make_manager: ManagerFactory, tmp_path: Path
) -> None:
    # httpx.AsyncClient's multipart bodies (files=) were never retried after a 401, when
    # the aiohttp middleware and the requests auth send the same form again intact.
    mgr = make_manager()
    await mgr.add_account(ACCOUNT, emulator.issue_refresh_token(ACCOUNT))
    await mgr.get_access_token(ACCOUNT)
    auth = mgr.httpx_auth(ACCOUNT, origins=[emulator.api_url])
    async with httpx.AsyncClient(auth=auth) as c:
        with contextlib.ExitStack() as files:
            for name, file, retried in _multipart_cases(tmp_path, files):
                emulator.reset_counters()
                emulator.api_fail_next(1)  # a 401 for a token that looks valid
                answer = await c.post(
                    f"{emulator.api_url}/echo", files={"bids": file()}, data={"campaign": "c-9"}
                )
                print(name)
                _check_multipart(emulator, answer, retried)


def test_httpx_sync_retries_a_multipart_body_it_can_send_again(
    amazon: AmazonEmulator, blocking: at.BlockingTokenManager, tmp_path: Path
) -> None:
    blocking.get_access_token(ACCOUNT)
    with (
        httpx.Client(auth=blocking.httpx_auth(ACCOUNT, origins=[amazon.api_url])) as client,
        contextlib.ExitStack() as files,
    ):
        for name, file, retried in _multipart_cases(tmp_path, files):
            amazon.reset_counters()
            amazon.api_fail_next(1)
            answer = client.post(
                f"{amazon.api_url}/echo", files={"bids": file()}, data={"campaign": "c-9"}
            )
            print(name)
            _check_multipart(amazon, answer, retried)
