"""Review of issue 12's hardening: the gaps a second look found, each driven as a user
meets it (a subprocess, a terminal, a browser's request, a real second user)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

import aioamztoken as at
from aioamztoken.testing import AmazonEmulator
from tests import test_cli, test_cli_hardening, test_hardening
from tests.test_cli import Runner, read_line_with, start_login, store_of
from tests.test_cli_hardening import terminal
from tests.test_hardening import NOBODY, as_nobody, needs_root

cli_env = test_cli.cli_env
cli = test_cli.cli
shared_dir = test_hardening.shared_dir

CLI = test_cli_hardening.CLI


def port_80_free() -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp binds
        try:
            probe.bind(("127.0.0.1", 80))
        except OSError:
            return False
    return True


async def raw_request(port: int, request: bytes) -> bytes:
    """Send ``request`` as it is (no client library would send a malformed one)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()


# ------------------------------------------------------------------ the login receiver


@pytest.mark.skipif(not port_80_free(), reason="needs to listen on 127.0.0.1:80 (root)")
@pytest.mark.parametrize("redirect_uri", ["http://127.0.0.1/callback", "http://127.0.0.1:80/cb"])
async def test_a_redirect_uri_on_the_default_port_is_kept_and_its_browser_accepted(
    emulator: AmazonEmulator, cli_env: dict[str, str], redirect_uri: str
) -> None:
    # A browser leaves ":80" out of Host; the URI registered with Amazon must be sent
    # exactly as given (Amazon compares it with the app's allowed return URLs).
    proc, consent_url = await start_login(cli_env, redirect_uri=redirect_uri)
    assert parse_qs(urlsplit(consent_url).query)["redirect_uri"] == [redirect_uri]
    # aiohttp, like a browser, sends "Host: 127.0.0.1" for port 80.
    async with aiohttp.ClientSession() as browser, browser.get(consent_url) as page:
        assert page.status == 200, await page.text()
    assert await asyncio.wait_for(proc.wait(), 60) == 0
    assert await store_of(cli_env).accounts() == ["acct"]


async def test_a_malformed_request_to_the_receiver_prints_no_traceback(
    emulator: AmazonEmulator, cli_env: dict[str, str]
) -> None:
    proc, consent_url = await start_login(cli_env)
    redirect = urlsplit(parse_qs(urlsplit(consent_url).query)["redirect_uri"][0])
    assert redirect.port
    answer = await raw_request(redirect.port, b"GET /callback HTTP/1.1\r\nHost: x\x1b[2J\r\n\r\n")
    assert answer.startswith(b"HTTP/1.")
    assert b" 400 " in answer.split(b"\r\n")[0]
    async with aiohttp.ClientSession() as browser, browser.get(consent_url) as page:
        assert page.status == 200
    assert proc.stderr is not None
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err
    assert b"Traceback" not in err
    assert b"\x1b" not in err


# ------------------------------------------------------------------ the emulator command


async def test_the_emulator_command_reports_a_malformed_request_in_one_line() -> None:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "emulator",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert proc.stderr is not None
        banner = await read_line_with(proc.stdout, "http://127.0.0.1:")
        match = re.search(r"127\.0\.0\.1:(\d+)", banner)
        assert match
        answer = await raw_request(int(match.group(1)), b"GET / HTTP/1.1\r\nHost: x\x1b[2J\r\n\r\n")
        assert b" 400 " in answer.split(b"\r\n")[0]
        line = await read_line_with(proc.stderr, "aioamztoken emulator:")
        assert "BadHttpMessage" in line
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0
    assert b"Traceback" not in err
    assert b"\x1b" not in err


# ------------------------------------------------------------------ Ctrl-C at a prompt


async def test_ctrl_c_at_the_add_prompt_interrupts_at_once(cli_env: dict[str, str]) -> None:
    async with terminal(cli_env, "add", "acct") as term:
        await term.expect("refresh token (input hidden):")
        await asyncio.sleep(0.5)
        term.type(b"\x03")
        # Before the fix the first Ctrl-C was swallowed: the prompt waited on.
        status = await term.finish(timeout=30)
    assert status == 130, term.seen
    assert b"interrupted" in term.seen
    assert b"Traceback" not in term.seen
    assert not Path(cli_env["AIOAMZTOKEN_STORE"].removeprefix("file://")).exists()


async def test_ctrl_c_at_the_remove_question_interrupts_at_once(
    cli: Runner, emulator: AmazonEmulator, cli_env: dict[str, str]
) -> None:
    await cli("add", "acct", stdin=emulator.issue_refresh_token("acct"))
    async with terminal(cli_env, "remove", "acct") as term:
        await term.expect("[y/N]")
        await asyncio.sleep(0.5)
        term.type(b"\x03")
        status = await term.finish(timeout=30)
    assert status == 130, term.seen
    assert b"Traceback" not in term.seen
    assert await store_of(cli_env).accounts() == ["acct"]


async def test_ctrl_c_at_the_manual_login_paste_prompt_interrupts_at_once(
    cli_env: dict[str, str],
) -> None:
    async with terminal(
        cli_env, "login", "acct", "--manual", "--no-browser", "--timeout", "300"
    ) as term:
        await term.expect("redirected URL:")
        await asyncio.sleep(0.5)
        term.type(b"\x03")
        # Before the fix the read ran in a thread that outlived Ctrl-C until Enter.
        status = await term.finish(timeout=30)
    assert status == 130, term.seen
    assert b"interrupted" in term.seen
    assert b"Traceback" not in term.seen


async def test_a_pasted_refusal_of_another_login_is_reported_as_a_state_mismatch(
    cli_env: dict[str, str],
) -> None:
    proc, _ = await start_login(cli_env, "--manual", redirect_uri="https://app.example/cb")
    assert proc.stdin is not None
    proc.stdin.write(b"https://app.example/cb?error=access_denied&state=not-this-login\n")
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1
    assert "state mismatch" in err.decode()
    assert "refused" not in err.decode()
    assert not Path(cli_env["AIOAMZTOKEN_STORE"].removeprefix("file://")).exists()


# ------------------------------------------------------------------ closed standard streams


def run_with_closed(env: dict[str, str], fd: int, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI started with descriptor ``fd`` (1 or 2) closed, as ``>&-`` / ``2>&-`` do."""
    keep = {1: "stderr", 2: "stdout"}[fd]
    return subprocess.run(
        [*CLI, *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=False,
        **{keep: subprocess.PIPE},  # type: ignore[arg-type]
        text=True,
        timeout=60,
        check=False,
        preexec_fn=lambda: os.close(fd),
    )


async def test_accounts_with_standard_output_closed_shows_no_traceback(
    cli: Runner, emulator: AmazonEmulator, cli_env: dict[str, str]
) -> None:
    await cli("add", "acct", stdin=emulator.issue_refresh_token("acct"))
    done = await asyncio.to_thread(run_with_closed, cli_env, 1, "accounts")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr


async def test_with_standard_error_closed_messages_stay_out_of_the_output(
    cli: Runner, emulator: AmazonEmulator, cli_env: dict[str, str]
) -> None:
    await cli("add", "acct", stdin=emulator.issue_refresh_token("acct"))
    done = await asyncio.to_thread(run_with_closed, cli_env, 2, "accounts", "--json")
    assert done.returncode == 0
    # The "1 account(s) in ..." note is for stderr; stdout stays the JSON alone.
    assert [row["account_id"] for row in json.loads(done.stdout)] == ["acct"]


# ------------------------------------------------------------------ stores


async def test_a_subclass_of_a_plaintext_keyring_is_refused_whatever_its_priority(
    tmp_path: Path,
) -> None:
    module = pytest.importorskip(
        "keyrings.alt.file", reason="needs the insecure-test-keyring extra (keyrings.alt)"
    )

    class Rebadged(module.PlaintextKeyring):  # type: ignore[name-defined, misc]
        priority = 5  # type: ignore[assignment]

    Rebadged.__module__ = "somebody.keyrings"
    backend = Rebadged()
    backend.file_path = str(tmp_path / "k.cfg")
    store = at.KeyringTokenStore("review", backend=backend, lock_dir=tmp_path / "locks")
    with pytest.raises(at.StorageError, match=r"somebody\.keyrings.*allow_insecure_backend"):
        await store.save("a", at.Token("Atza|a", "Atzr|a", time.time() + 3600))
    assert not (tmp_path / "k.cfg").exists()


@pytest.mark.seconduser
@needs_root
async def test_a_directory_store_in_another_users_directory_is_not_written(
    shared_dir: Path,
) -> None:
    planted = shared_dir / "tokens.d"
    as_nobody('mkdir -m 0777 "$TARGET"', TARGET=str(planted))
    assert planted.stat().st_uid == NOBODY
    store = at.DirectoryTokenStore(planted)
    with pytest.raises(at.StorageError, match="owned by another user") as caught:
        await store.save("a", at.Token("Atza|a", "Atzr|plantedDirectory", time.time() + 3600))
    assert str(planted) in str(caught.value)
    assert [p for p in planted.iterdir() if p.name != ".locks"] == []
    with contextlib.suppress(FileNotFoundError):
        assert list((planted / ".locks").iterdir()) == []
