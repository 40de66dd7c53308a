"""The CLI driven as a user drives it: subprocesses against the emulator."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import aiohttp
import pytest

import aioamztoken as at
from aioamztoken.testing import AmazonEmulator


@dataclass
class Done:
    status: int
    stdout: str
    stderr: str


Runner = Callable[..., Coroutine[Any, Any, Done]]


@pytest.fixture
def cli_env(emulator: AmazonEmulator, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOAMZTOKEN_")}
    env.update(
        AIOAMZTOKEN_CLIENT_ID=emulator.client_id,
        AIOAMZTOKEN_CLIENT_SECRET=emulator.client_secret,
        AIOAMZTOKEN_TOKEN_URL=emulator.token_url,
        AIOAMZTOKEN_CONSENT_URL=emulator.authorization_url,
        AIOAMZTOKEN_STORE=f"file://{tmp_path / 'tokens.json'}",
        PYTHONUNBUFFERED="1",
    )
    return env


async def spawn_cli(
    env: dict[str, str], *args: str, stderr: int = asyncio.subprocess.PIPE
) -> asyncio.subprocess.Process:
    """``python -m aioamztoken ARGS`` with piped stdin and stdout."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aioamztoken",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
        env=env,
    )


@pytest.fixture
def cli(cli_env: dict[str, str]) -> Runner:
    async def run(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> Done:
        proc = await spawn_cli(env or cli_env, *args)
        out, err = await asyncio.wait_for(
            proc.communicate(None if stdin is None else stdin.encode()), 60
        )
        assert proc.returncode is not None
        return Done(proc.returncode, out.decode(), err.decode())

    return run


def store_of(env: dict[str, str]) -> at.FileTokenStore:
    return at.FileTokenStore(env["AIOAMZTOKEN_STORE"].removeprefix("file://"))


def assert_clean_error(done: Done, status: int) -> None:
    assert done.status == status, done
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("aioamztoken: error: ")
    assert "Traceback" not in done.stderr


async def test_add_reads_stdin_and_token_prints_only_the_access_token(
    cli: Runner, emulator: AmazonEmulator, cli_env: dict[str, str]
) -> None:
    refresh_token = emulator.issue_refresh_token("acct")
    added = await cli("add", "acct", stdin=refresh_token + "\n")
    assert added.status == 0, added
    assert refresh_token not in added.stdout + added.stderr
    assert emulator.token_requests == 0

    done = await cli("token", "acct")
    assert done.status == 0, done
    assert done.stdout == emulator.current_access_token("acct") + "\n"
    assert done.stderr == ""
    again = await cli("token", "acct")
    assert again.stdout == done.stdout  # served from the store, no second request
    assert emulator.token_requests == 1
    stored = await store_of(cli_env).load("acct")
    assert stored is not None
    assert stored.refresh_token == refresh_token


async def test_add_refuses_an_empty_stdin(cli: Runner) -> None:
    assert_clean_error(await cli("add", "acct", stdin=""), 2)


async def test_accounts_table_and_json(
    cli: Runner, emulator: AmazonEmulator, cli_env: dict[str, str]
) -> None:
    store = store_of(cli_env)
    await store.save(
        "fresh", at.Token("Atza|f", emulator.issue_refresh_token("f"), time.time() + 3000)
    )
    await store.save(
        "due", at.Token("Atza|d", emulator.issue_refresh_token("d"), time.time() + 100)
    )
    await store.save(
        "old", at.Token("Atza|o", emulator.issue_refresh_token("o"), time.time() - 100)
    )
    table = await cli("accounts")
    assert table.status == 0, table
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["ACCOUNT", "STATE", "EXPIRES", "IN"]
    states = {line.split()[0]: line.split()[1] for line in lines[1:]}
    assert states == {"due": "due", "fresh": "fresh", "old": "expired"}
    assert "Atza|" not in table.stdout

    as_json = await cli("accounts", "--json")
    rows = json.loads(as_json.stdout)
    assert [r["account_id"] for r in rows] == ["due", "fresh", "old"]
    assert [r["state"] for r in rows] == ["due", "fresh", "expired"]
    assert 2900 < rows[1]["expires_in"] <= 3000


async def test_refresh_one_and_all(cli: Runner, emulator: AmazonEmulator) -> None:
    for n in range(3):
        await cli("add", f"a{n}", stdin=emulator.issue_refresh_token(f"a{n}"))
    one = await cli("refresh", "a1")
    assert one.status == 0, one
    assert emulator.token_requests_for("a1") == 1
    every = await cli("refresh", "--all")
    assert every.status == 0, every
    assert "refreshed 3 of 3 accounts" in every.stdout
    assert "[" not in every.stderr  # no progress bar when not on a terminal
    assert emulator.token_requests == 4


async def test_refresh_all_shows_a_progress_bar_on_a_terminal(
    emulator: AmazonEmulator, cli: Runner, cli_env: dict[str, str]
) -> None:
    for n in range(4):
        await cli("add", f"a{n}", stdin=emulator.issue_refresh_token(f"a{n}"))
    master, slave = pty.openpty()
    proc = await spawn_cli(cli_env, "refresh", "--all", stderr=slave)
    os.close(slave)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    terminal = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        terminal += chunk
    os.close(master)
    assert proc.returncode == 0
    assert b"4/4" in terminal
    assert "━".encode() in terminal  # rich's bar (tests/test_cli_live.py reads the screen)
    assert b"refreshed 4 of 4" in out


async def test_remove(cli: Runner, emulator: AmazonEmulator, cli_env: dict[str, str]) -> None:
    await cli("add", "acct", stdin=emulator.issue_refresh_token("acct"))
    assert (await cli("remove", "acct", "--yes")).status == 0
    assert await store_of(cli_env).accounts() == []
    assert_clean_error(await cli("remove", "acct", "--yes"), 3)


async def test_revoked_token_tells_the_user_to_log_in_again(
    cli: Runner, emulator: AmazonEmulator
) -> None:
    await cli("add", "acct", stdin=emulator.issue_refresh_token("acct"))
    emulator.revoke("acct")
    done = await cli("token", "acct")
    assert_clean_error(done, 4)
    assert "aioamztoken login acct" in done.stderr


async def test_unknown_account_and_missing_credentials(
    cli: Runner, cli_env: dict[str, str]
) -> None:
    assert_clean_error(await cli("token", "nobody"), 3)
    env = dict(cli_env)
    del env["AIOAMZTOKEN_CLIENT_SECRET"]
    missing = await cli("token", "nobody", env=env)
    assert_clean_error(missing, 2)
    assert "AIOAMZTOKEN_CLIENT_SECRET" in missing.stderr


async def test_wrong_client_secret_and_dead_endpoint_are_one_line_errors(
    cli: Runner, emulator: AmazonEmulator, cli_env: dict[str, str]
) -> None:
    await cli("add", "acct", stdin=emulator.issue_refresh_token("acct"))
    env = dict(cli_env, AIOAMZTOKEN_CLIENT_SECRET="wrong-secret")
    done = await cli("token", "acct", env=env)
    assert_clean_error(done, 5)
    assert "wrong-secret" not in done.stderr
    emulator.fail_next(1, status=400, body='{"error":"invalid_request"}')
    assert_clean_error(await cli("token", "acct"), 1)


async def test_corrupt_store_is_a_one_line_error_and_stays_untouched(
    cli: Runner, cli_env: dict[str, str]
) -> None:
    path = Path(cli_env["AIOAMZTOKEN_STORE"].removeprefix("file://"))
    path.write_bytes(b"<html>not json</html>")
    done = await cli("accounts")
    assert_clean_error(done, 7)
    assert str(path) in done.stderr
    assert path.read_bytes() == b"<html>not json</html>"


async def read_line_with(stream: asyncio.StreamReader, needle: str) -> str:
    while True:
        line = (await asyncio.wait_for(stream.readline(), 30)).decode()
        assert line, f"stream ended before a line with {needle!r}"
        if needle in line:
            return line.strip()


def spawn_login(
    cli_env: dict[str, str],
    *extra: str,
    redirect_uri: str = "http://127.0.0.1:0/callback",
    timeout: str = "30",
) -> Coroutine[Any, Any, asyncio.subprocess.Process]:
    """``aioamztoken login acct --no-browser`` with a redirect URI and a timeout."""
    return spawn_cli(
        cli_env,
        "login",
        "acct",
        "--no-browser",
        "--redirect-uri",
        redirect_uri,
        "--timeout",
        timeout,
        *extra,
    )


async def start_login(
    cli_env: dict[str, str], *extra: str, redirect_uri: str = "http://127.0.0.1:0/callback"
) -> tuple[asyncio.subprocess.Process, str]:
    """A login under way, and the consent URL it printed."""
    proc = await spawn_login(cli_env, *extra, redirect_uri=redirect_uri)
    assert proc.stderr is not None
    consent_url = await read_line_with(proc.stderr, "/ap/oa?")
    return proc, consent_url


async def test_login_flow_with_the_test_playing_the_browser(
    emulator: AmazonEmulator, cli_env: dict[str, str]
) -> None:
    proc, consent_url = await start_login(cli_env)
    query = parse_qs(urlsplit(consent_url).query)
    assert query["code_challenge_method"] == ["S256"]
    assert len(query["state"][0]) >= 32
    assert query["redirect_uri"][0].startswith("http://127.0.0.1:")
    async with aiohttp.ClientSession() as browser:
        async with browser.get(consent_url, allow_redirects=False) as consent:
            assert consent.status == 302
            redirect = consent.headers["Location"]
        assert redirect.startswith(query["redirect_uri"][0])
        async with browser.get(redirect) as landing:
            assert landing.status == 200
            assert "authorization received" in await landing.text()
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    assert "logged in account 'acct'" in err.decode()
    stored = await store_of(cli_env).load("acct")
    assert stored is not None
    assert stored.access_token == emulator.current_access_token("emu-account")
    code = parse_qs(urlsplit(redirect).query)["code"][0]
    assert code not in err.decode()


async def test_login_ignores_a_forged_state_and_waits_for_the_real_callback(
    cli_env: dict[str, str], emulator: AmazonEmulator
) -> None:
    proc, consent_url = await start_login(cli_env)
    async with aiohttp.ClientSession() as browser:
        async with browser.get(consent_url, allow_redirects=False) as consent:
            real = consent.headers["Location"]
            redirect = urlsplit(real)
        forged = dict(parse_qs(redirect.query))
        forged["state"] = ["attacker-state"]
        forged_url = urlunsplit(redirect._replace(query=urlencode(forged, doseq=True)))
        async with browser.get(forged_url) as landing:
            assert landing.status == 400
        assert proc.returncode is None  # still waiting
        assert emulator.token_requests == 0
        async with browser.get(real) as landing:
            assert landing.status == 200
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    assert "ignored a callback whose state is not this login's" in err.decode()
    assert await store_of(cli_env).accounts() == ["acct"]


async def test_manual_login_reads_the_pasted_redirect_url(
    cli_env: dict[str, str], emulator: AmazonEmulator
) -> None:
    proc, consent_url = await start_login(
        cli_env, "--manual", redirect_uri="https://app.example.com/amazon/callback"
    )
    assert proc.stdin is not None
    async with (
        aiohttp.ClientSession() as browser,
        browser.get(consent_url, allow_redirects=False) as consent,
    ):
        redirect = consent.headers["Location"]
    assert redirect.startswith("https://app.example.com/amazon/callback?")
    proc.stdin.write(redirect.encode() + b"\n")
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    assert await store_of(cli_env).accounts() == ["acct"]


async def test_login_times_out_clearly(cli_env: dict[str, str]) -> None:
    proc = await spawn_login(cli_env, timeout="0.5")
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert "no redirect arrived" in err.decode()


async def test_migrate_copies_and_verifies(
    cli: Runner, emulator: AmazonEmulator, cli_env: dict[str, str], tmp_path: Path
) -> None:
    for n in range(3):
        await cli("add", f"a{n}", stdin=emulator.issue_refresh_token(f"a{n}"))
    target = f"dir://{tmp_path / 'copy'}"
    done = await cli("migrate", cli_env["AIOAMZTOKEN_STORE"], target)
    assert done.status == 0, done
    assert "3" in done.stdout
    assert "Atzr|" not in done.stdout
    copied = await at.DirectoryTokenStore(tmp_path / "copy").accounts()
    assert copied == ["a0", "a1", "a2"]


async def test_no_secret_in_any_cli_output(
    cli: Runner, emulator: AmazonEmulator, cli_env: dict[str, str]
) -> None:
    refresh_token = emulator.issue_refresh_token("acct")
    outputs = [await cli("add", "acct", stdin=refresh_token)]
    outputs.append(await cli("refresh", "acct"))
    outputs.append(await cli("accounts"))
    outputs.append(await cli("accounts", "--json"))
    outputs.append(await cli("refresh", "--all"))
    emulator.revoke("acct")
    outputs.append(await cli("refresh", "acct"))
    access = emulator.current_access_token("acct") or "none"
    for done in outputs:
        text = done.stdout + done.stderr
        for secret in (refresh_token, emulator.client_secret, access):
            assert secret not in text


def test_default_store_is_in_the_user_data_directory() -> None:
    from aioamztoken.cli import default_store_url

    plain = default_store_url({})
    assert plain.startswith("file://")
    assert plain.endswith("aioamztoken/tokens.json")
    encrypted = default_store_url({"AIOAMZTOKEN_KEY": "k"})
    assert encrypted.startswith("encrypted-file://")
    assert encrypted.endswith("tokens.enc")


def test_exit_codes_are_documented_in_help() -> None:
    from aioamztoken.cli import EXIT_CODES, _build_parser

    text = _build_parser().format_help()
    for code in EXIT_CODES:
        assert f"{code} " in text


async def test_accounts_shows_needs_reauth_after_a_revoked_token(
    cli: Runner, emulator: AmazonEmulator
) -> None:
    await cli("add", "acct", stdin=emulator.issue_refresh_token("acct"))
    await cli("token", "acct")
    emulator.revoke("acct")
    assert (await cli("refresh", "acct")).status == 4
    table = await cli("accounts")
    assert "needs re-auth" in table.stdout
    rows = json.loads((await cli("accounts", "--json")).stdout)
    assert rows[0]["state"] == "needs-reauth"


async def test_the_default_store_never_switches_silently_when_a_key_appears(
    cli: Runner, emulator: AmazonEmulator, cli_env: dict[str, str], tmp_path: Path
) -> None:
    env = dict(cli_env, XDG_DATA_HOME=str(tmp_path / "data"), HOME=str(tmp_path / "home"))
    del env["AIOAMZTOKEN_STORE"]
    added = await cli("add", "acct", stdin=emulator.issue_refresh_token("acct"), env=env)
    assert added.status == 0, added
    keyed = dict(env, AIOAMZTOKEN_KEY=at.EncryptedFileTokenStore.generate_key())
    done = await cli("accounts", env=keyed)
    assert_clean_error(done, 2)
    assert "aioamztoken migrate" in done.stderr
    # After the migration it names, the encrypted store is used.
    source, target = done.stderr.split("'aioamztoken migrate ")[1].split("'")[0].split()
    moved = await cli("migrate", source, target, env=keyed)
    assert moved.status == 0, moved
    # Both files now exist: a shell without the key must not write to the stale plain one.
    stale = await cli("add", "acct2", stdin=emulator.issue_refresh_token("acct2"), env=env)
    assert_clean_error(stale, 2)
    assert "both a plain and an encrypted store" in stale.stderr
    Path(urlsplit(source).path).unlink()
    listed = await cli("accounts", "--json", env=keyed)
    assert [r["account_id"] for r in json.loads(listed.stdout)] == ["acct"]


async def test_refresh_all_reports_each_failure_on_its_own_line(
    cli: Runner, emulator: AmazonEmulator
) -> None:
    for account in ("good", "revoked"):
        await cli("add", account, stdin=emulator.issue_refresh_token(account))
    emulator.revoke("revoked")
    done = await cli("refresh", "--all")
    assert done.status == 1
    assert "refreshed 1 of 2 accounts" in done.stdout
    assert "aioamztoken: error: revoked: needs re-authorization" in done.stderr
    assert "aioamztoken login revoked" in done.stderr


async def test_accounts_on_an_empty_store_says_so(cli: Runner) -> None:
    done = await cli("accounts")
    assert done.status == 0
    assert done.stdout == ""
    assert "no accounts" in done.stderr


async def test_login_refuses_a_redirect_uri_it_cannot_receive(cli: Runner) -> None:
    done = await cli(
        "login", "acct", "--no-browser", "--redirect-uri", "https://app.example.com/cb"
    )
    assert_clean_error(done, 2)
    assert "--manual" in done.stderr


async def test_login_says_so_when_the_redirect_port_is_taken(cli: Runner) -> None:
    from aiohttp import web

    runner = web.AppRunner(web.Application())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        done = await cli(
            "login", "acct", "--no-browser", "--redirect-uri", f"http://127.0.0.1:{port}/cb"
        )
    finally:
        await runner.cleanup()
    assert_clean_error(done, 2)
    assert f"127.0.0.1:{port}" in done.stderr


async def test_the_loopback_receiver_takes_one_redirect_on_its_path_only() -> None:
    from aioamztoken._cli_login import LoopbackReceiver

    async with (
        LoopbackReceiver("http://127.0.0.1:0/callback", "s") as receiver,
        aiohttp.ClientSession() as browser,
    ):
        base = receiver.redirect_uri.rsplit("/", 1)[0]
        async with browser.get(f"{base}/elsewhere") as other:
            assert other.status == 404
        async with browser.get(f"{receiver.redirect_uri}?code=c&state=s") as first:
            assert first.status == 200
        async with browser.get(f"{receiver.redirect_uri}?code=x&state=y") as second:
            assert second.status == 410
        assert await receiver.wait(1) == {"code": ["c"], "state": ["s"]}


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (
            {"error": ["access_denied"], "error_description": ["user said no"], "state": ["s"]},
            "refused: access_denied",
        ),
        ({"state": ["s"]}, "no authorization code"),
        ({"state": ["other"], "code": ["c"]}, "state mismatch"),
    ],
)
def test_redirect_queries_that_carry_no_usable_code(
    query: dict[str, list[str]], message: str
) -> None:
    from aioamztoken.cli import CliError, _code_from_query

    with pytest.raises(CliError, match=message):
        _code_from_query(query, "s")


def test_pasting_nothing_is_a_usage_error() -> None:
    from aioamztoken.cli import EXIT_USAGE, CliError, _code_from_redirect

    with pytest.raises(CliError) as info:
        _code_from_redirect("", "s")
    assert info.value.status == EXIT_USAGE


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (5, "5s"), (-5, "-5s"), (125, "2m05s"), (3725, "1h02m"), (-7200, "-2h00m")],
)
def test_durations_read_like_a_person_writes_them(seconds: float | None, text: str) -> None:
    from aioamztoken.cli import _duration

    assert _duration(seconds) == text


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    from aioamztoken.cli import main

    assert main([]) == 2
    assert "usage: aioamztoken" in capsys.readouterr().out
