"""The CLI hardened, driven as a user drives it: subprocesses, pipes, and a pseudo-terminal
where a person would be typing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import aiohttp
import pytest

import aioamztoken as at
from aioamztoken.stores._codec import encode_account
from aioamztoken.testing import AmazonEmulator
from tests import test_cli
from tests.redis_server import REDIS_SERVER, SKIP_REASON, RedisServer, free_port
from tests.test_cli import (
    Runner,
    assert_clean_error,
    read_line_with,
    spawn_cli,
    start_login,
    store_of,
)

# The fixtures of the CLI tests, shared by name.
cli_env = test_cli.cli_env
cli = test_cli.cli

CLI = [sys.executable, "-m", "aioamztoken"]


def run_sync(env: dict[str, str], *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, timeout=60, check=False, **kwargs
    )  # type: ignore[call-overload, no-any-return]


# ------------------------------------------------------------------ pipes closed early


def run_into_a_closed_pipe(env: dict[str, str], *args: str) -> tuple[int, str]:
    """Run the CLI with standard output a pipe whose reader has already gone."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [*CLI, *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    return done.returncode, done.stderr


async def test_every_command_writing_to_a_closed_pipe_exits_quietly(
    cli: Runner, emulator: AmazonEmulator, cli_env: dict[str, str]
) -> None:
    await cli("add", "acct", stdin=emulator.issue_refresh_token("acct"))
    for args in (
        ["accounts"],
        ["accounts", "--json"],
        ["token", "acct"],
        ["refresh", "acct"],
        ["refresh", "--all"],
        ["--help"],
        ["--version"],
    ):
        status, err = await asyncio.to_thread(run_into_a_closed_pipe, cli_env, *args)
        assert "Traceback" not in err, (args, err)
        assert "BrokenPipeError" not in err, (args, err)
        assert status == 0, (args, status, err)


async def test_accounts_piped_to_head_exits_quietly(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    # Enough accounts that the table outgrows a pipe's buffer: head is gone before the end.
    directory = tmp_path / "many"
    directory.mkdir(mode=0o700)
    for n in range(1500):
        path = directory / f"account-{n:05d}.json"
        path.write_bytes(encode_account(f"account-{n:05d}", at.Token("", f"Atzr|r{n}", 0.0)))
        path.chmod(0o600)
    env = dict(cli_env, AIOAMZTOKEN_STORE=directory.as_uri().replace("file:", "dir:", 1))
    for json_flag in ("", " --json"):
        done = await asyncio.to_thread(
            subprocess.run,
            ["sh", "-c", f"{sys.executable} -m aioamztoken accounts{json_flag} | head -1"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
        assert "BrokenPipe" not in done.stderr
        assert len(done.stdout.splitlines()) == 1


# ------------------------------------------------------------------ options


async def test_version(cli: Runner) -> None:
    done = await cli("--version")
    assert done.status == 0
    assert done.stdout.strip() == f"aioamztoken {at.__version__}"


async def test_global_options_work_after_the_command_too(
    cli: Runner, emulator: AmazonEmulator, cli_env: dict[str, str], tmp_path: Path
) -> None:
    other = tmp_path / "other.json"
    env = {k: v for k, v in cli_env.items() if k != "AIOAMZTOKEN_STORE"}
    env["XDG_DATA_HOME"] = str(tmp_path / "data")  # the default store: not the one used
    store = f"file://{other}"
    added = await cli(
        "add", "acct", "--store", store, stdin=emulator.issue_refresh_token("a"), env=env
    )
    assert added.status == 0, added
    assert await at.FileTokenStore(other).accounts() == ["acct"]
    before = await cli("--store", store, "--json", "accounts", env=env)
    after = await cli("accounts", "--store", store, "--json", env=env)
    mixed = await cli("--json", "accounts", "--store", store, env=env)
    assert before.status == after.status == mixed.status == 0
    assert [r["account_id"] for r in json.loads(after.stdout)] == ["acct"]
    assert json.loads(before.stdout) == json.loads(after.stdout) == json.loads(mixed.stdout)
    # --token-url after the command reaches the endpoint it names.
    no_url = {k: v for k, v in env.items() if k != "AIOAMZTOKEN_TOKEN_URL"}
    token = await cli(
        "token", "acct", "--store", store, "--token-url", emulator.token_url, env=no_url
    )
    assert token.status == 0, token
    assert token.stdout.strip() == emulator.current_access_token("a")
    assert not (tmp_path / "data").exists()


def shadowing(tmp_path: Path, module: str) -> str:
    """A directory that, put first on PYTHONPATH, makes ``module`` look uninstalled."""
    shadow = tmp_path / "shadow"
    (shadow / module).mkdir(parents=True)
    (shadow / module / "__init__.py").write_text(
        f'raise ModuleNotFoundError("No module named {module!r}", name={module!r})\n'
    )
    return str(shadow)


@pytest.mark.parametrize(
    ("url", "module", "extra"),
    [("redis://127.0.0.1:1/0", "redis", "redis"), ("keyring://svc", "keyring", "keyring")],
)
async def test_a_store_whose_extra_is_missing_is_one_line_naming_the_extra(
    cli: Runner, cli_env: dict[str, str], tmp_path: Path, url: str, module: str, extra: str
) -> None:
    env = dict(cli_env, PYTHONPATH=shadowing(tmp_path, module))
    for args in (["accounts", "--store", url], ["--store", url, "remove", "x", "--yes"]):
        done = await cli(*args, env=env)
        assert_clean_error(done, 2)
        assert f"pip install 'aioamztoken[{extra}]'" in done.stderr


# ------------------------------------------------------------------ a terminal


class Terminal:
    """A child process on a pseudo-terminal of its own (its controlling terminal)."""

    def __init__(self, proc: asyncio.subprocess.Process, master: int) -> None:
        self.proc = proc
        self.master = master
        self.seen = b""

    async def expect(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text.encode() not in self.seen:
            assert time.monotonic() < deadline, f"never saw {text!r} in {self.seen!r}"
            self.seen += await asyncio.to_thread(self._read)

    def _read(self) -> bytes:
        import select

        ready, _, _ = select.select([self.master], [], [], 0.5)
        if not ready:
            return b""
        try:
            return os.read(self.master, 4096)
        except OSError:  # the child has gone and closed the terminal
            return b""

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    async def finish(self, timeout: float = 60) -> int:
        status = await asyncio.wait_for(self.proc.wait(), timeout)
        self.seen += await asyncio.to_thread(self._read)
        return status


@contextlib.asynccontextmanager
async def terminal(env: dict[str, str], *args: str) -> AsyncIterator[Terminal]:
    master, slave = pty.openpty()
    # setsid --ctty: a new session whose controlling terminal is the pty, as a login shell's
    # is; getpass and isatty() then behave as for a person at a terminal.
    proc = await asyncio.create_subprocess_exec(
        "setsid", "--ctty", *CLI, *args, stdin=slave, stdout=slave, stderr=slave, env=env
    )
    os.close(slave)
    term = Terminal(proc, master)
    try:
        yield term
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        os.close(master)


async def test_ctrl_d_at_the_add_prompt_exits_cleanly_and_stores_nothing(
    cli_env: dict[str, str],
) -> None:
    async with terminal(cli_env, "add", "acct") as term:
        await term.expect("refresh token (input hidden):")
        term.type(b"\x04")
        status = await term.finish()
    assert status == 2, term.seen
    assert b"Traceback" not in term.seen
    assert b"nothing was stored" in term.seen
    assert not Path(cli_env["AIOAMZTOKEN_STORE"].removeprefix("file://")).exists()


async def test_add_on_a_terminal_hides_the_token_and_stores_it(
    cli_env: dict[str, str], emulator: AmazonEmulator
) -> None:
    refresh_token = emulator.issue_refresh_token("acct")
    async with terminal(cli_env, "add", "acct") as term:
        await term.expect("refresh token (input hidden):")
        term.type(refresh_token.encode() + b"\n")
        assert await term.finish() == 0, term.seen
    assert refresh_token.encode() not in term.seen  # not echoed
    stored = await store_of(cli_env).load("acct")
    assert stored is not None
    assert stored.refresh_token == refresh_token


async def test_remove_asks_on_a_terminal(
    cli: Runner, cli_env: dict[str, str], emulator: AmazonEmulator
) -> None:
    await cli("add", "acct", stdin=emulator.issue_refresh_token("acct"))
    for answer, status, remaining in (
        (b"n\n", 1, ["acct"]),
        (b"\x04", 1, ["acct"]),
        (b"y\n", 0, []),
    ):
        async with terminal(cli_env, "remove", "acct") as term:
            await term.expect("[y/N]")
            assert b"remove account 'acct' from file://" in term.seen
            term.type(answer)
            assert await term.finish() == status, term.seen
        assert b"Traceback" not in term.seen
        assert await store_of(cli_env).accounts() == remaining


async def test_remove_without_a_terminal_needs_yes(
    cli: Runner, cli_env: dict[str, str], emulator: AmazonEmulator
) -> None:
    await cli("add", "acct", stdin=emulator.issue_refresh_token("acct"))
    refused = await cli("remove", "acct", stdin="y\n")
    assert_clean_error(refused, 2)
    assert "--yes" in refused.stderr
    assert await store_of(cli_env).accounts() == ["acct"]
    done = await cli("remove", "acct", "--yes")
    assert done.status == 0, done
    assert await store_of(cli_env).accounts() == []
    async with terminal(cli_env, "remove", "acct", "-y") as term:  # no question with -y
        assert await term.finish() == 3


# ------------------------------------------------------------------ migrate


async def test_migrate_refuses_a_source_that_does_not_exist_or_is_empty(
    cli: Runner, tmp_path: Path
) -> None:
    target = tmp_path / "target.json"
    missing = await cli("migrate", f"file://{tmp_path}/typo.json", f"file://{target}")
    assert_clean_error(missing, 2)
    assert "does not exist" in missing.stderr
    empty_dir = await cli("migrate", f"dir://{tmp_path}/no-such-dir", f"file://{target}")
    assert_clean_error(empty_dir, 2)
    source = tmp_path / "empty.json"
    await at.FileTokenStore(source).save("x", at.Token("", "Atzr|x", 0.0))
    await at.FileTokenStore(source).delete("x")
    assert source.exists()
    empty = await cli("migrate", f"file://{source}", f"file://{target}")
    assert_clean_error(empty, 2)
    assert "holds no accounts" in empty.stderr
    assert not target.exists()
    assert not (tmp_path / ".target.json.locks").exists()


# ------------------------------------------------------------------ accounts


async def test_accounts_names_its_store_and_an_account_not_yet_refreshed(
    cli: Runner, emulator: AmazonEmulator, cli_env: dict[str, str]
) -> None:
    await cli("add", "new", stdin=emulator.issue_refresh_token("new"))
    await cli("add", "used", stdin=emulator.issue_refresh_token("used"))
    await store_of(cli_env).save(
        "old", at.Token("Atza|o", emulator.issue_refresh_token("o"), time.time() - 60)
    )
    assert (await cli("refresh", "used")).status == 0
    table = await cli("accounts")
    assert table.status == 0, table
    assert cli_env["AIOAMZTOKEN_STORE"] in table.stderr
    rows = {line.split("  ")[0].strip(): line for line in table.stdout.splitlines()[1:]}
    assert "not yet refreshed" in rows["new"]
    assert "expired" not in rows["new"]
    assert "expired" in rows["old"]
    assert "fresh" in rows["used"]
    as_json = {r["account_id"]: r for r in json.loads((await cli("accounts", "--json")).stdout)}
    assert as_json["new"]["state"] == "not-yet-refreshed"
    assert as_json["new"]["expires_at"] is None
    assert as_json["old"]["state"] == "expired"


@pytest.mark.redis
async def test_accounts_names_a_redis_store_without_its_password(
    cli: Runner, cli_env: dict[str, str], emulator: AmazonEmulator
) -> None:
    if REDIS_SERVER is None:
        pytest.skip(SKIP_REASON)
    import redis

    server = RedisServer().start()
    try:
        password = "redis-pw-of-this-test"
        client = redis.Redis(host="127.0.0.1", port=server.port)
        client.config_set("requirepass", password)
        client.close()
        url = f"redis://:{password}@127.0.0.1:{server.port}/0"
        added = await cli("add", "acct", "--store", url, stdin=emulator.issue_refresh_token("a"))
        assert added.status == 0, added
        done = await cli("accounts", "--store", url)
        assert done.status == 0, done
        assert f"redis://:***@127.0.0.1:{server.port}/0" in done.stderr
        assert password not in done.stdout + done.stderr + added.stdout + added.stderr
    finally:
        server.stop()


async def test_control_characters_are_escaped_in_ids_and_server_text(
    cli: Runner, emulator: AmazonEmulator, cli_env: dict[str, str]
) -> None:
    evil = "acme\x1b[2J\rfake-line"
    added = await cli("add", evil, stdin=emulator.issue_refresh_token("x"))
    assert added.status == 0, added
    table = await cli("accounts")
    assert "\x1b" not in table.stdout
    assert "\r" not in table.stdout
    assert "acme\\x1b[2J\\x0dfake-line" in table.stdout
    emulator.fail_next(
        1,
        status=400,
        body=json.dumps({"error": "invalid_request", "error_description": "no\x1b[31m\x07 way"}),
    )
    done = await cli("token", evil)
    assert_clean_error(done, 1)
    assert "\x1b" not in done.stderr
    assert "\x07" not in done.stderr
    assert "no\\x1b[31m\\x07 way" in done.stderr


async def test_endpoint_text_echoing_secrets_is_redacted_on_stderr(
    cli: Runner, emulator: AmazonEmulator, cli_env: dict[str, str]
) -> None:
    refresh_token = emulator.issue_refresh_token("acct")
    await cli("add", "acct", stdin=refresh_token)
    for status in (400, 401):  # refusals: no retry (5xx is covered in test_hardening)
        echo = f"got {refresh_token} and {emulator.client_secret} and code=ANcodeEchoed123"
        emulator.fail_next(
            1,
            status=status,
            body=json.dumps({"error": "invalid_request", "error_description": echo}),
        )
        done = await cli("token", "acct")
        assert done.status != 0
        assert "[redacted]" in done.stderr
        for secret in (refresh_token, emulator.client_secret, "ANcodeEchoed123"):
            assert secret not in done.stdout + done.stderr


# ------------------------------------------------------------------ the login receiver


async def test_callbacks_with_a_wrong_or_missing_state_are_refused_and_the_login_waits(
    cli_env: dict[str, str], emulator: AmazonEmulator
) -> None:
    proc, consent_url = await start_login(cli_env)
    redirect_uri = parse_qs(urlsplit(consent_url).query)["redirect_uri"][0]
    async with aiohttp.ClientSession() as browser:
        for query in (
            {"error": "access_denied", "state": "wrong"},
            {"error": "access_denied"},
            {"code": "ANcode-forged", "state": "wrong"},
            {"code": "ANcode-forged"},
        ):
            async with browser.get(f"{redirect_uri}?{urlencode(query)}") as landing:
                assert landing.status == 400, query
        assert proc.returncode is None
        async with browser.get(consent_url, allow_redirects=False) as consent:
            real = consent.headers["Location"]
        async with browser.get(real) as landing:
            assert landing.status == 200
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    assert err.decode().count("ignored a callback") == 4
    assert emulator.code_grants == 1
    assert await store_of(cli_env).accounts() == ["acct"]


async def test_an_error_callback_with_the_right_state_ends_the_login(
    cli_env: dict[str, str], emulator: AmazonEmulator
) -> None:
    proc, consent_url = await start_login(cli_env)
    query = parse_qs(urlsplit(consent_url).query)
    redirect_uri, state = query["redirect_uri"][0], query["state"][0]
    refusal = {
        "error": "access_denied\x1b[31m",
        "error_description": "no\x1b]0;x\x07",
        "state": state,
    }
    async with (
        aiohttp.ClientSession() as browser,
        browser.get(f"{redirect_uri}?{urlencode(refusal)}") as landing,
    ):
        page = await landing.text()
    assert landing.status == 200
    assert "access_denied" in page
    assert "\x1b" not in page
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    text = err.decode()
    assert "authorization was refused: access_denied" in text
    assert "\x1b" not in text
    assert "\x07" not in text
    assert emulator.token_requests == 0
    assert await store_of(cli_env).accounts() == []


async def test_requests_for_another_host_are_refused(
    cli_env: dict[str, str], emulator: AmazonEmulator
) -> None:
    proc, consent_url = await start_login(cli_env)
    query = parse_qs(urlsplit(consent_url).query)
    redirect = urlsplit(query["redirect_uri"][0])
    async with aiohttp.ClientSession() as browser:
        async with browser.get(consent_url, allow_redirects=False) as consent:
            real = consent.headers["Location"]
        # A page on evil.example that resolves to 127.0.0.1 (DNS rebinding) sends its own Host.
        headers = {"Host": f"evil.example:{redirect.port}"}
        async with browser.get(real, headers=headers) as landing:
            assert landing.status == 400
        assert proc.returncode is None
        async with browser.get(real) as landing:
            assert landing.status == 200
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    assert "another host" in err.decode()


async def test_port_0_binds_a_free_port_that_the_consent_url_carries(
    cli_env: dict[str, str],
) -> None:
    proc, consent_url = await start_login(cli_env, redirect_uri="http://127.0.0.1:0/callback")
    try:
        redirect = urlsplit(parse_qs(urlsplit(consent_url).query)["redirect_uri"][0])
        assert redirect.port not in (None, 0, 80)
        assert redirect.path == "/callback"
        # It is really listening there (the wrong state is refused, but answered).
        async with (
            aiohttp.ClientSession() as browser,
            browser.get(urlunsplit(redirect._replace(query="state=x"))) as landing,
        ):
            assert landing.status == 400
    finally:
        proc.kill()
        await proc.wait()


# ------------------------------------------------------------------ aioamztoken emulator


@contextlib.asynccontextmanager
async def emulator_command(
    *args: str,
) -> AsyncIterator[tuple[asyncio.subprocess.Process, dict[str, str], str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOAMZTOKEN_")}
    env["PYTHONUNBUFFERED"] = "1"
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "emulator",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    exported: dict[str, str] = {}
    demo_token = ""
    try:
        while "AIOAMZTOKEN_STORE" not in exported or not demo_token:
            line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
            assert line, "the emulator command ended early"
            if match := re.match(r"export (AIOAMZTOKEN_\w+)=(\S+)$", line.strip()):
                exported[match[1]] = match[2]
            if match := re.match(r"DEMO_REFRESH_TOKEN='(.+)'$", line.strip()):
                demo_token = match[1]
        yield proc, {**env, **exported}, demo_token
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_the_emulator_command_lets_a_new_user_try_the_cli_by_hand(cli: Runner) -> None:
    async with emulator_command("--port", "0") as (proc, env, demo_token):
        assert demo_token.startswith("Atzr|")
        assert (await cli("add", "demo", stdin=demo_token + "\n", env=env)).status == 0
        every = await cli("refresh", "--all", env=env)
        assert every.status == 0, every
        assert "refreshed 1 of 1" in every.stdout
        token = await cli("token", "demo", env=env)
        assert token.stdout.startswith("Atza|")
        # login, with the test playing the browser
        login = await spawn_cli(
            env,
            "login",
            "second",
            "--no-browser",
            "--redirect-uri",
            "http://127.0.0.1:0/callback",
            "--timeout",
            "30",
        )
        assert login.stderr is not None
        consent_url = await read_line_with(login.stderr, "/ap/oa?")
        async with aiohttp.ClientSession() as browser, browser.get(consent_url) as landing:
            assert landing.status == 200
        await asyncio.wait_for(login.communicate(), 30)
        assert login.returncode == 0
        listed = json.loads((await cli("accounts", "--json", env=env)).stdout)
        assert sorted(r["account_id"] for r in listed) == ["demo", "second"]
        store_file = Path(env["AIOAMZTOKEN_STORE"].removeprefix("file://"))
        assert store_file.exists()
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    assert b"Traceback" not in err
    assert not store_file.exists()  # its scratch store is gone with it


async def test_the_emulator_command_listens_on_the_port_asked_for() -> None:
    port = free_port()
    async with emulator_command("--port", str(port)) as (proc, env, _):
        assert env["AIOAMZTOKEN_TOKEN_URL"] == f"http://127.0.0.1:{port}/auth/o2/token"
        async with (
            aiohttp.ClientSession() as http,
            http.post(env["AIOAMZTOKEN_TOKEN_URL"], data={"grant_type": "refresh_token"}) as answer,
        ):
            assert answer.status in (400, 401)  # Amazon's answer to a bad request
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
    assert proc.returncode == 0


async def test_the_emulator_command_says_so_when_the_port_is_taken(cli: Runner) -> None:
    async with emulator_command("--port", "0") as (_, env, _token):
        port = urlsplit(env["AIOAMZTOKEN_TOKEN_URL"]).port
        assert port is not None
        done = await cli("emulator", "--port", str(port))
    assert_clean_error(done, 2)
    assert f"127.0.0.1:{port}" in done.stderr
