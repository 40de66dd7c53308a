"""The CLI's live views, driven in a real pseudo-terminal and read back as a screen.

pexpect runs the command on a pty of a known size; pyte (a VT100 emulator) replays what
the command wrote, so the test reads the screen a person would see, not the byte stream.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pexpect
import pyte
import pytest

import aioamztoken as at
from aioamztoken.testing import AmazonEmulator

from . import test_cli
from .test_cli import Runner, store_of

cli_env = test_cli.cli_env
cli = test_cli.cli

COLUMNS, LINES = 110, 30


class Terminal:
    """A command on a pty, and the screen it draws."""

    def __init__(self, env: dict[str, str], *args: str, python: Sequence[str] = ()) -> None:
        self.child = pexpect.spawn(
            sys.executable,
            [*(python or ["-m", "aioamztoken"]), *args],
            env={**env, "TERM": "xterm-256color", "COLUMNS": str(COLUMNS), "LINES": str(LINES)},
            dimensions=(LINES, COLUMNS),
            timeout=30,
        )
        self.screen = pyte.Screen(COLUMNS, LINES)
        self.stream = pyte.ByteStream(self.screen)
        self.raw = b""

    def pump(self) -> None:
        """Feed the screen whatever the command wrote so far."""
        while True:
            try:
                chunk = self.child.read_nonblocking(65536, timeout=0.05)
            except pexpect.TIMEOUT:
                return
            except pexpect.EOF:
                return
            self.raw += chunk
            self.stream.feed(chunk)

    def lines(self) -> list[str]:
        return [line.rstrip() for line in self.screen.display]

    def text(self) -> str:
        return "\n".join(self.lines())

    async def wait_for(self, *needles: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await asyncio.to_thread(self.pump)
            text = self.text()
            if all(n in text for n in needles):
                return text
        raise AssertionError(f"never on screen: {needles!r}\n{self.text()}")

    async def finish(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while self.child.isalive() and time.monotonic() < deadline:
            await asyncio.to_thread(self.pump)
        self.pump()
        self.child.close()
        assert self.child.exitstatus is not None, "still running"
        return int(self.child.exitstatus)


@pytest.fixture
def terminals() -> Iterator[list[Terminal]]:
    made: list[Terminal] = []
    yield made
    for term in made:
        if term.child.isalive():
            term.child.terminate(force=True)


async def test_accounts_watch_is_a_live_table_updated_in_place(
    emulator: AmazonEmulator, cli_env: dict[str, str], terminals: list[Terminal]
) -> None:
    store = store_of(cli_env)
    now = time.time()
    await store.save("acct-fresh", at.Token("Atza|x", "Atzr|fresh", now + 3600, issued_at=now))
    await store.save(
        "acct-revoked", at.Token("Atza|y", "Atzr|revoked", now + 3600, needs_reauth=True)
    )
    await store.save("acct-new", at.Token("", "Atzr|new", 0.0))
    term = Terminal(cli_env, "accounts", "--watch", "--interval", "0.3")
    terminals.append(term)
    screen = await term.wait_for("acct-fresh", "acct-revoked", "acct-new", "3 accounts")
    rows = [line for line in screen.splitlines() if line.startswith("acct-")]
    # The most urgent first: needs re-authorization, then expired, then fresh.
    assert [r.split()[0] for r in rows] == ["acct-revoked", "acct-new", "acct-fresh"]
    assert "needs re-auth" in rows[0]
    assert "expired" in rows[1]
    assert "fresh" in rows[2]
    assert "59m" in rows[2]  # expires in

    # Another process adds an account and revokes one: the same table changes in place.
    await store.save("acct-later", at.Token("Atza|z", "Atzr|later", now + 60))
    await store.save(
        "acct-fresh", at.Token("Atza|x", "Atzr|fresh", now + 3600, issued_at=now, needs_reauth=True)
    )
    screen = await term.wait_for("acct-later", "4 accounts", "2 needs re-auth")
    headers = [line for line in screen.splitlines() if line.startswith("ACCOUNT ")]
    assert len(headers) == 1, screen  # redrawn, not appended
    assert screen.count("accounts:") == 1, screen
    later = next(line for line in screen.splitlines() if line.startswith("acct-later"))
    assert "due" in later  # inside the default 300 s buffer
    rows = [line.split()[0] for line in screen.splitlines() if line.startswith("acct-")]
    assert rows == ["acct-fresh", "acct-revoked", "acct-new", "acct-later"]
    for secret in ("Atza|", "Atzr|"):
        assert secret.encode() not in term.raw

    term.child.sendintr()  # Ctrl-C ends a watch, quietly
    assert await term.finish() == 0
    assert b"Traceback" not in term.raw
    assert b"\x1b[?25h" in term.raw  # the cursor is shown again


async def test_refresh_all_shows_progress_and_failures_as_they_happen(
    emulator: AmazonEmulator, cli: Runner, terminals: list[Terminal], cli_env: dict[str, str]
) -> None:
    for n in range(6):
        await cli("add", f"a{n}", stdin=emulator.issue_refresh_token(f"a{n}"))
    emulator.revoke("a3")
    term = Terminal(cli_env, "refresh", "--all")
    terminals.append(term)
    status = await term.finish(timeout=60)
    text = term.text()
    assert status == 1, text
    assert "6/6" in text
    assert "━" in text  # the bar
    assert "/s" in text  # the rate
    assert "1 failed" in text
    assert "failed: a3: needs re-authorization: run 'aioamztoken login a3'" in text
    assert "refreshed 5 of 6 accounts" in text
    assert b"ETA" in term.raw
    assert emulator.refresh_grants == 5


async def test_accounts_watch_off_a_terminal_prints_the_plain_table_each_time(
    emulator: AmazonEmulator, cli: Runner, cli_env: dict[str, str]
) -> None:
    await cli("add", "acct-a", stdin=emulator.issue_refresh_token("acct-a"))
    done = await cli("accounts", "--watch", "--interval", "0.1", "--count", "3")
    assert done.status == 0, done
    tables = done.stdout.strip().split("\n\n")
    assert len(tables) == 3
    for table in tables:
        assert table.splitlines()[0].split() == ["ACCOUNT", "STATE", "EXPIRES", "IN"]
        assert table.splitlines()[1].split()[0] == "acct-a"
    assert "\x1b[" not in done.stdout


async def test_accounts_watch_refuses_a_bad_interval(cli: Runner) -> None:
    done = await cli("accounts", "--watch", "--interval", "0")
    assert done.status == 2
    assert "--interval must be positive" in done.stderr


def test_printable_escapes_control_characters() -> None:
    from aioamztoken._cli_live import printable

    assert printable("plain-id") == "plain-id"
    assert printable("evil\x1b[2Jid\n") == "evil\\x1b[2Jid\\n"


def test_a_watch_screen_fits_the_terminal(tmp_path: Path) -> None:
    from rich.console import Console

    from aioamztoken._cli_live import _table

    rows = [
        at.AccountStatus(f"acct-{n:03d}", at.AccountState.FRESH, time.time() + 3000)
        for n in range(100)
    ]
    console = Console(file=(tmp_path / "out").open("w"), width=100, height=20)
    console.print(_table(rows, height=20, interval=2))
    console.file.close()
    lines = (tmp_path / "out").read_text().splitlines()
    assert len(lines) <= 20
    assert "... and" in lines[-1]
    assert "100 accounts: 100 fresh" in lines[0]


def test_the_watch_shows_the_age_of_an_authorization_where_the_store_knows_it(
    tmp_path: Path,
) -> None:
    from types import SimpleNamespace

    from rich.console import Console

    from aioamztoken._cli_live import _table

    now = time.time()
    rows = [
        SimpleNamespace(
            account_id=name,
            state=at.AccountState.FRESH,
            expires_in=3000.0,
            refreshing=name == "acct-b",
            last_error=None,
            authorized_at=authorized_at,
        )
        for name, authorized_at in (
            ("acct-a", now - 3 * 86400),
            ("acct-b", now - 600),
            ("acct-c", None),
        )
    ]
    console = Console(file=(tmp_path / "out").open("w"), width=120, height=20)
    console.print(_table(rows, height=20, interval=2))  # type: ignore[arg-type]
    console.file.close()
    lines = {line.split()[0]: line for line in (tmp_path / "out").read_text().splitlines()[2:]}
    assert "3d ago" in lines["acct-a"]
    assert "10m00s ago" in lines["acct-b"]
    assert "(refreshing)" in lines["acct-b"]
    assert lines["acct-c"].split()[-1] == "-"


WITHOUT_RICH = """
import importlib.abc, sys

class NoRich(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "rich" or name.startswith("rich."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NoRich())
from aioamztoken.cli import main
sys.exit(main(sys.argv[1:]))
"""


async def test_without_rich_a_terminal_gets_the_plain_output(
    emulator: AmazonEmulator, cli: Runner, terminals: list[Terminal], cli_env: dict[str, str]
) -> None:
    for n in range(3):
        await cli("add", f"a{n}", stdin=emulator.issue_refresh_token(f"a{n}"))
    emulator.revoke("a1")
    term = Terminal(cli_env, "refresh", "--all", python=["-c", WITHOUT_RICH])
    terminals.append(term)
    assert await term.finish(timeout=60) == 1
    text = term.text()
    assert "refreshed 2 of 3 accounts" in text
    assert "aioamztoken: error: a1: needs re-authorization" in text
    assert "━" not in text
    term = Terminal(
        cli_env,
        "accounts",
        "--watch",
        "--interval",
        "0.1",
        "--count",
        "2",
        python=["-c", WITHOUT_RICH],
    )
    terminals.append(term)
    assert await term.finish(timeout=60) == 0
    assert term.text().count("ACCOUNT") == 2  # printed twice, not redrawn
