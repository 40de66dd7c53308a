"""``aioamztoken emulator``: the loopback Login with Amazon + Ads API emulator, in the
foreground, for trying the command line and the library by hand."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import TextIO

from .testing import AmazonEmulator

__all__ = ["run_emulator"]

DEMO_ACCOUNT = "demo"


def run_emulator(port: int, out: TextIO | None = None) -> int:
    """Serve the emulator on ``127.0.0.1:port`` (0: a free port) until Ctrl-C or SIGTERM.

    Prints the environment that points the CLI and the library at it (a store in a
    temporary directory, deleted on exit, so nothing reaches the real default store) and
    a refresh token of the demo account. Returns the exit status.
    """
    return asyncio.run(_serve(port, out or sys.stdout))


class _OneLine(logging.Handler):
    """aiohttp's report of a malformed request, as one escaped line without traceback."""

    def emit(self, record: logging.LogRecord) -> None:
        from ._cli_support import escape

        reason = ""
        if record.exc_info and record.exc_info[1] is not None:
            reason = f": {type(record.exc_info[1]).__name__}"
        try:
            text = " ".join(record.getMessage().split())
        except Exception:
            text = "a request failed"
        print(f"aioamztoken emulator: {escape(text)[:200]}{reason}", file=sys.stderr)


async def _serve(port: int, out: TextIO) -> int:
    # No traceback on the terminal for a malformed request: one line instead.
    server_log = logging.getLogger("aiohttp.server")
    quiet = _OneLine()
    server_log.addHandler(quiet)
    server_log.propagate = False
    try:
        return await _serve_quietly(port, out)
    finally:
        server_log.removeHandler(quiet)
        server_log.propagate = True


async def _serve_quietly(port: int, out: TextIO) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on this platform
            loop.add_signal_handler(signum, stop.set)
    scratch = Path(tempfile.mkdtemp(prefix="aioamztoken-emulator-"))
    try:
        emulator = AmazonEmulator(port=port)
        try:
            await emulator.start()
        except OSError as exc:
            print(
                f"aioamztoken: error: cannot listen on 127.0.0.1:{port}: "
                f"{exc.strerror or type(exc).__name__}",
                file=sys.stderr,
            )
            return 2
        try:
            _introduce(emulator, scratch / "tokens.json", out)
            await stop.wait()
        finally:
            await emulator.close()
        print("aioamztoken emulator: stopped", file=sys.stderr)
        return 0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signum)


def _introduce(emulator: AmazonEmulator, store: Path, out: TextIO) -> None:
    refresh_token = emulator.issue_refresh_token(DEMO_ACCOUNT)
    lines = [
        f"aioamztoken emulator: Login with Amazon and the Ads API on {emulator.base_url}",
        "(fake credentials, loopback only; Ctrl-C stops it)",
        "",
        "# Point the CLI and the library at it (in another shell):",
        f"export AIOAMZTOKEN_CLIENT_ID={emulator.client_id}",
        f"export AIOAMZTOKEN_CLIENT_SECRET={emulator.client_secret}",
        f"export AIOAMZTOKEN_TOKEN_URL={emulator.token_url}",
        f"export AIOAMZTOKEN_CONSENT_URL={emulator.authorization_url}",
        f"export AIOAMZTOKEN_STORE={store.as_uri()}",
        "",
        f"# A refresh token of the account {DEMO_ACCOUNT!r} (a fake one, from the emulator):",
        f"DEMO_REFRESH_TOKEN='{refresh_token}'",
        "",
        "# Then try:",
        f'echo "$DEMO_REFRESH_TOKEN" | aioamztoken add {DEMO_ACCOUNT}',
        "aioamztoken refresh --all",
        "aioamztoken accounts",
        "aioamztoken login another-account --redirect-uri http://127.0.0.1:0/callback",
        f"aioamztoken token {DEMO_ACCOUNT}",
        "",
        "# The store above lives in a temporary directory, deleted when the emulator stops.",
        "# In Python: AsyncTokenManager(client_id, client_secret, store=...,",
        "#                              token_url=os.environ['AIOAMZTOKEN_TOKEN_URL'])",
    ]
    print("\n".join(lines), file=out, flush=True)
