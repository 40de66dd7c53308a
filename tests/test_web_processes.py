"""``aioamztoken serve`` as real processes: a state made by one is good in another."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import pytest

import aioamztoken as at
from aioamztoken.testing import AmazonEmulator

PUBLIC_CALLBACK = "https://consent.example.com/callback"  # a load balancer in front of both
APP_ID = "amzn1.sp.solution.emulator-app"


@pytest.fixture
def serve_env(emulator: AmazonEmulator, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOAMZTOKEN_")}
    env.update(
        AIOAMZTOKEN_CLIENT_ID=emulator.client_id,
        AIOAMZTOKEN_CLIENT_SECRET=emulator.client_secret,
        AIOAMZTOKEN_TOKEN_URL=emulator.token_url,
        AIOAMZTOKEN_CONSENT_URL=emulator.authorization_url,
        AIOAMZTOKEN_STORE=(tmp_path / "tokens.json").as_uri(),
        PYTHONUNBUFFERED="1",
    )
    return env


@contextlib.asynccontextmanager
async def serving(
    env: dict[str, str], *args: str
) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    """A running ``aioamztoken serve --port 0 ARGS`` and its origin; killed at the end."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aioamztoken",
        "serve",
        "--redirect-uri",
        PUBLIC_CALLBACK,
        "--port",
        "0",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stderr is not None
        line = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
        found = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
        assert found, line
        yield found.group(1), proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.communicate()


def query_of(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


@pytest.mark.parametrize("api", ["ads", "sp-api"])
async def test_connect_on_one_process_and_callback_on_another(
    serve_env: dict[str, str], emulator: AmazonEmulator, api: str
) -> None:
    extra: tuple[str, ...] = ()
    if api == "sp-api":
        serve_env["AIOAMZTOKEN_CONSENT_URL"] = emulator.seller_central_url
        extra = ("--api", "sp-api", "--application-id", APP_ID)
    async with (
        serving(serve_env, *extra) as (first, _),
        serving(serve_env, *extra) as (second, _),
        aiohttp.ClientSession() as browser,
    ):
        async with browser.get(
            f"{first}/connect", params={"account": "acme"}, allow_redirects=False
        ) as resp:
            assert resp.status == 302
            consent_url = resp.headers["Location"]
        async with browser.get(consent_url, allow_redirects=False) as resp:
            assert resp.status == 302
            back = resp.headers["Location"]
        assert back.startswith(PUBLIC_CALLBACK + "?")
        async with browser.get(f"{second}/callback?{urlsplit(back).query}") as resp:
            body = await resp.text()
            assert resp.status == 200, body
            assert resp.headers["Cache-Control"] == "no-store"
        assert "Account connected" in body
        # The same state again, now on the first process: refused, nothing changes.
        store = at.open_store(serve_env["AIOAMZTOKEN_STORE"])
        stored = await store.load("acme")
        async with browser.get(f"{first}/callback?{urlsplit(back).query}") as resp:
            assert resp.status in (400, 502)
    assert stored is not None
    assert await store.load("acme") == stored
    assert emulator.code_grants == 1
    if api == "ads":
        assert "code_challenge" in query_of(consent_url)


async def test_the_operator_page_is_for_loopback_clients_that_no_proxy_forwarded(
    serve_env: dict[str, str], emulator: AmazonEmulator
) -> None:
    store = at.open_store(serve_env["AIOAMZTOKEN_STORE"])
    await store.save("acme", at.Token("", emulator.issue_refresh_token("acme"), 0.0))
    async with serving(serve_env) as (origin, proc), aiohttp.ClientSession() as browser:
        async with browser.get(f"{origin}/accounts") as resp:
            assert resp.status == 200
            page = await resp.text()
        async with browser.get(
            f"{origin}/accounts", headers={"X-Forwarded-For": "203.0.113.9"}
        ) as resp:
            assert resp.status == 403
        async with browser.get(f"{origin}/accounts", headers={"Forwarded": "for=1.2.3.4"}) as resp:
            assert resp.status == 403
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err
    assert "https://consent.example.com/connect?account=acme" in page
    assert emulator.refresh_grants == 0


async def test_serve_refuses_a_port_in_use_and_needs_credentials(
    serve_env: dict[str, str],
) -> None:
    async with serving(serve_env) as (origin, _):
        port = origin.rsplit(":", 1)[1]
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "aioamztoken",
            "serve",
            "--redirect-uri",
            f"http://127.0.0.1:{port}/callback",
            stderr=asyncio.subprocess.PIPE,
            env=serve_env,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in err.decode()
    no_secret = {k: v for k, v in serve_env.items() if k != "AIOAMZTOKEN_CLIENT_SECRET"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aioamztoken",
        "serve",
        "--redirect-uri",
        PUBLIC_CALLBACK,
        stderr=asyncio.subprocess.PIPE,
        env=no_secret,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert "AIOAMZTOKEN_CLIENT_SECRET" in err.decode()
