"""The ``aioamztoken`` command: log in, add, print, list, refresh, remove and migrate accounts.

Configuration comes from flags or from the environment:

================================  ==============================================================
``AIOAMZTOKEN_CLIENT_ID``         the LwA client id (``--client-id``)
``AIOAMZTOKEN_CLIENT_SECRET``     the LwA client secret (environment only: never on argv)
``AIOAMZTOKEN_REGION``            ``na``, ``eu`` or ``fe`` (``--region``)
``AIOAMZTOKEN_STORE``             a store URL (``--store``); default: a file in the user data dir
``AIOAMZTOKEN_KEY``               the key of an encrypted store (comma-separated for rotation)
``AIOAMZTOKEN_TOKEN_URL``         override the token endpoint (``--token-url``)
``AIOAMZTOKEN_CONSENT_URL``       override the consent page (``--consent-url``)
================================  ==============================================================

Errors are one line on standard error, with the exit codes of :data:`EXIT_CODES`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import sys
import webbrowser
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import parse_qs, urlsplit, urlunsplit

from ._errors import (
    AccountNotFoundError,
    AmzTokenError,
    InvalidClientError,
    InvalidGrantError,
    StorageError,
    TokenEndpointError,
)
from ._lwa import make_pkce_pair
from ._manager import AsyncTokenManager
from ._models import AccountState, Region

__all__ = ["EXIT_CODES", "main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_REAUTH = 4
EXIT_CLIENT = 5
EXIT_ENDPOINT = 6
EXIT_STORAGE = 7
EXIT_INTERRUPTED = 130

#: Exit status of each outcome.
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_FAILURE: "any other failure (a state mismatch in login, a refusal by the endpoint, ...)",
    EXIT_USAGE: "bad usage or missing configuration",
    EXIT_NOT_FOUND: "unknown account",
    EXIT_REAUTH: "the account needs re-authorization: run 'aioamztoken login ACCOUNT'",
    EXIT_CLIENT: "the client id or secret was rejected",
    EXIT_ENDPOINT: "the token endpoint could not be reached or kept failing",
    EXIT_STORAGE: "the store could not be read or written (corrupt file, wrong key, ...)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}

DEFAULT_REDIRECT_URI = "http://127.0.0.1:8765/callback"
PLACEHOLDER = "-"  # client credentials for commands that never call the token endpoint


class CliError(Exception):
    """A failure to report on one line, with an exit status."""

    def __init__(self, message: str, status: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.status = status


def default_store_url(environ: dict[str, str] | None = None) -> str:
    """The store used when none is configured: in the user data directory, encrypted
    when ``AIOAMZTOKEN_KEY`` is set."""
    import platformdirs

    env = os.environ if environ is None else environ
    base = Path(platformdirs.user_data_dir("aioamztoken"))
    if env.get("AIOAMZTOKEN_KEY"):
        return "encrypted-" + (base / "tokens.enc").as_uri()
    return (base / "tokens.json").as_uri()


def _build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="aioamztoken",
        description=(
            "Keep Amazon Ads API (Login with Amazon) tokens valid. "
            "Run 'aioamztoken demo' to see it work against the embedded emulator."
        ),
        epilog="exit codes: "
        + "; ".join(f"{code} {meaning}" for code, meaning in EXIT_CODES.items()),
    )
    parser.add_argument(
        "--store",
        default=env("AIOAMZTOKEN_STORE"),
        help="store URL (file:///…, dir:///…, encrypted-file:///…, keyring://service, "
        "redis://…); default $AIOAMZTOKEN_STORE or a file in the user data directory",
    )
    parser.add_argument(
        "--client-id", default=env("AIOAMZTOKEN_CLIENT_ID"), help="default $AIOAMZTOKEN_CLIENT_ID"
    )
    parser.add_argument(
        "--region",
        default=env("AIOAMZTOKEN_REGION", "na"),
        help="na, eu or fe; default $AIOAMZTOKEN_REGION or na",
    )
    parser.add_argument(
        "--token-url", default=env("AIOAMZTOKEN_TOKEN_URL"), help="override the token endpoint"
    )
    parser.add_argument(
        "--consent-url", default=env("AIOAMZTOKEN_CONSENT_URL"), help="override the consent page"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    login = commands.add_parser(
        "login",
        help="authorize an account in the browser (authorization code flow with PKCE)",
        description="Open the consent page, receive the code on a loopback redirect server "
        "(127.0.0.1 only, one request) and store the account's tokens.",
    )
    login.add_argument("account")
    login.add_argument(
        "--redirect-uri",
        default=DEFAULT_REDIRECT_URI,
        help=f"a return URL registered for the app (default {DEFAULT_REDIRECT_URI}; "
        "port 0 picks a free one)",
    )
    login.add_argument("--no-browser", action="store_true", help="print the URL, do not open it")
    login.add_argument(
        "--manual",
        action="store_true",
        help="paste the URL you were redirected to, for redirect URIs that are not loopback",
    )
    login.add_argument("--scope", default="advertising::campaign_management")
    login.add_argument("--timeout", type=float, default=300.0, help="seconds to wait (300)")

    add = commands.add_parser(
        "add",
        help="store an existing refresh token, read from standard input",
        description="Read a refresh token from standard input (never from the command line, "
        "to keep it out of shell history and process lists) and store it.",
    )
    add.add_argument("account")

    token = commands.add_parser(
        "token", help="print one valid access token and nothing else on standard output"
    )
    token.add_argument("account")

    accounts = commands.add_parser("accounts", help="list accounts with state and time to expiry")
    accounts.add_argument("--json", action="store_true", help="machine-readable output")
    accounts.add_argument(
        "--watch", action="store_true", help="a live table, updated in place until Ctrl-C"
    )
    accounts.add_argument(
        "--interval", type=float, default=2.0, help="seconds between --watch updates (2)"
    )
    accounts.add_argument("--count", type=int, help="with --watch: stop after COUNT updates")

    refresh = commands.add_parser("refresh", help="refresh one account, or all of them")
    which = refresh.add_mutually_exclusive_group(required=True)
    which.add_argument("account", nargs="?")
    which.add_argument("--all", action="store_true", help="every account (progress on a terminal)")

    remove = commands.add_parser("remove", help="forget an account")
    remove.add_argument("account")

    migrate = commands.add_parser(
        "migrate", help="copy every account from one store to another, and verify the copy"
    )
    migrate.add_argument("source", metavar="FROM_URL")
    migrate.add_argument("target", metavar="TO_URL")

    commands.add_parser(
        "demo",
        help="run a realistic session against the embedded emulator (no Amazon account needed)",
        description=(
            "Start the embedded Login with Amazon + Ads API emulator on 127.0.0.1 and drive "
            "many accounts with many concurrent callers, an expired token, a revoked refresh "
            "token and a token the API rejects; print what it took."
        ),
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    if args.command == "demo":
        from ._demo import main as demo

        return demo(sys.stdout)
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        if getattr(args, "watch", False):
            return EXIT_OK  # Ctrl-C is how a watch ends
        _fail("interrupted")
        return EXIT_INTERRUPTED
    except CliError as exc:
        _fail(str(exc))
        return exc.status
    except InvalidGrantError as exc:
        account = exc.account_id or getattr(args, "account", None) or "ACCOUNT"
        _fail(
            f"account {account!r} needs re-authorization (its refresh token was revoked or "
            f"expired): run 'aioamztoken login {account}'"
        )
        return EXIT_REAUTH
    except AccountNotFoundError as exc:
        hint = "" if args.command == "remove" else f"; or run 'aioamztoken login {exc.account_id}'"
        _fail(f"{exc}{hint}")
        return EXIT_NOT_FOUND
    except InvalidClientError as exc:
        _fail(f"{exc}: check AIOAMZTOKEN_CLIENT_ID and AIOAMZTOKEN_CLIENT_SECRET")
        return EXIT_CLIENT
    except TokenEndpointError as exc:
        _fail(str(exc))
        return EXIT_ENDPOINT
    except StorageError as exc:
        _fail(str(exc))
        return EXIT_STORAGE
    except AmzTokenError as exc:
        _fail(str(exc))
        return EXIT_FAILURE
    except ValueError as exc:
        _fail(str(exc))
        return EXIT_USAGE


def _fail(message: str) -> None:
    print(f"aioamztoken: error: {' '.join(message.split())}", file=sys.stderr)


# ---------------------------------------------------------------------- plumbing


def _open_store(args: argparse.Namespace) -> Any:
    from .stores import open_store

    if args.store:
        return open_store(args.store)
    url = default_store_url()
    plain, encrypted = default_store_url({}), default_store_url({"AIOAMZTOKEN_KEY": "-"})
    other = plain if url == encrypted else encrypted
    if url == plain and _store_file_exists(plain) and _store_file_exists(encrypted):
        raise CliError(
            "both a plain and an encrypted store exist in the data directory: set "
            "AIOAMZTOKEN_KEY to use the encrypted one (and delete the plain file once "
            "migrated), or pass --store",
            EXIT_USAGE,
        )
    if not _store_file_exists(url) and _store_file_exists(other):
        # The key was set (or unset) since the accounts were stored: never switch silently.
        if url == encrypted:
            raise CliError(
                f"AIOAMZTOKEN_KEY is set but your accounts are in the plain store; encrypt "
                f"them with 'aioamztoken migrate {other} {url}', then delete the plain file",
                EXIT_USAGE,
            )
        raise CliError(
            "your accounts are in the encrypted store: set AIOAMZTOKEN_KEY to its key",
            EXIT_USAGE,
        )
    return open_store(url)


def _store_file_exists(url: str) -> bool:
    from urllib.parse import unquote

    try:
        return Path(unquote(urlsplit(url).path)).exists()
    except OSError:
        return True  # unreadable: let the store itself report it, in one line


@contextlib.asynccontextmanager
async def _manager(args: argparse.Namespace, *, network: bool) -> AsyncIterator[AsyncTokenManager]:
    client_id = args.client_id
    client_secret = os.environ.get("AIOAMZTOKEN_CLIENT_SECRET")
    if network and not (client_id and client_secret):
        raise CliError(
            "set AIOAMZTOKEN_CLIENT_ID (or --client-id) and AIOAMZTOKEN_CLIENT_SECRET",
            EXIT_USAGE,
        )
    store = _open_store(args)
    try:
        async with AsyncTokenManager(
            client_id or PLACEHOLDER,
            client_secret or PLACEHOLDER,
            store=store,
            region=Region.parse(args.region),
            token_url=args.token_url,
            authorization_base_url=args.consent_url,
            auto_refresh=False,
        ) as mgr:
            yield mgr
    finally:
        closer = getattr(store, "aclose", None)
        if closer is not None:
            await closer()


async def _run(args: argparse.Namespace) -> int:
    command = args.command
    if command == "migrate":
        return await _migrate(args.source, args.target)
    if command == "add":
        refresh_token = _read_secret_from_stdin()
        async with _manager(args, network=False) as mgr:
            await mgr.add_account(args.account, refresh_token)
        print(f"added account {args.account!r}", file=sys.stderr)
        return EXIT_OK
    if command == "remove":
        async with _manager(args, network=False) as mgr:
            await mgr.remove_account(args.account)
        print(f"removed account {args.account!r}", file=sys.stderr)
        return EXIT_OK
    if command == "accounts":
        async with _manager(args, network=False) as mgr:
            if args.watch:
                return await _watch(mgr, args)
            return await _accounts(mgr, as_json=args.json)
    async with _manager(args, network=True) as mgr:
        if command == "token":
            print(await mgr.get_access_token(args.account))
            return EXIT_OK
        if command == "refresh":
            if args.all:
                return await _refresh_all(mgr)
            token = await mgr.refresh(args.account)
            print(f"refreshed {args.account!r}: valid for {_duration(token.expires_in())}")
            return EXIT_OK
        if command == "login":
            return await _login(mgr, args)
    raise CliError(f"unknown command {command!r}", EXIT_USAGE)  # pragma: no cover


def _read_secret_from_stdin() -> str:
    if sys.stdin is None:
        raise CliError("no standard input to read the refresh token from", EXIT_USAGE)
    if sys.stdin.isatty():
        import getpass

        value = getpass.getpass("refresh token (input hidden): ")
    else:
        value = sys.stdin.readline()
    value = value.strip()
    if not value:
        raise CliError("no refresh token on standard input", EXIT_USAGE)
    return value


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    sign = "-" if seconds < 0 else ""
    seconds = abs(int(seconds))
    if seconds >= 3600:
        return f"{sign}{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{sign}{seconds // 60}m{seconds % 60:02d}s"
    return f"{sign}{seconds}s"


# ---------------------------------------------------------------------- commands


async def _accounts(mgr: AsyncTokenManager, *, as_json: bool) -> int:
    rows = []
    for account_id in await mgr.accounts():
        status = await mgr.status(account_id)
        rows.append(status)
    if as_json:
        payload = [
            {
                "account_id": s.account_id,
                "state": s.state.value,
                "expires_at": s.expires_at,
                "expires_in": None if s.expires_in is None else round(s.expires_in, 1),
            }
            for s in rows
        ]
        print(json.dumps(payload, indent=2))
        return EXIT_OK
    if not rows:
        print("no accounts", file=sys.stderr)
        return EXIT_OK
    width = max(len("ACCOUNT"), *(len(s.account_id) for s in rows))
    print(f"{'ACCOUNT':<{width}}  {'STATE':<13}  EXPIRES IN")
    for s in rows:
        state = "needs re-auth" if s.state is AccountState.NEEDS_REAUTH else s.state.value
        print(f"{s.account_id:<{width}}  {state:<13}  {_duration(s.expires_in)}")
    return EXIT_OK


async def _watch(mgr: AsyncTokenManager, args: argparse.Namespace) -> int:
    from ._cli_live import watch_accounts

    if not args.interval > 0 or (args.count is not None and args.count < 1):
        raise CliError("--interval must be positive and --count at least 1", EXIT_USAGE)
    return await watch_accounts(
        mgr,
        interval=args.interval,
        count=args.count,
        plain=lambda: _accounts(mgr, as_json=args.json),
    )


async def _refresh_all(mgr: AsyncTokenManager, out: TextIO | None = None) -> int:
    from ._cli_live import has_rich, refresh_all_live

    out = out or sys.stderr
    accounts = await mgr.accounts()

    async def one(account_id: str) -> str | None:
        """Refresh one account; what went wrong, if anything."""
        try:
            await mgr.refresh(account_id)
        except InvalidGrantError:
            return f"needs re-authorization: run 'aioamztoken login {account_id}'"
        except AmzTokenError as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    # On a terminal: a progress bar, each failure shown as it happens.
    live = out.isatty() and has_rich()
    if live:
        failures = await refresh_all_live(accounts, one, out)
    else:
        outcomes = await asyncio.gather(*(one(a) for a in accounts))
        failures = [(a, r) for a, r in zip(accounts, outcomes, strict=True) if r is not None]
    print(f"refreshed {len(accounts) - len(failures)} of {len(accounts)} accounts")
    for account_id, reason in sorted(failures) if not live else ():
        print(f"aioamztoken: error: {account_id}: {' '.join(reason.split())}", file=sys.stderr)
    return EXIT_OK if not failures else EXIT_FAILURE


async def _migrate(source_url: str, target_url: str) -> int:
    from .stores import migrate, open_store

    source = open_store(source_url)
    target = open_store(target_url)
    try:
        report = await migrate(source, target)
    finally:
        for store in (source, target):
            closer = getattr(store, "aclose", None)
            if closer is not None:
                await closer()
    print(report.render() if hasattr(report, "render") else str(report))
    return EXIT_OK if report.ok else EXIT_FAILURE


async def _login(mgr: AsyncTokenManager, args: argparse.Namespace) -> int:
    state = secrets.token_urlsafe(32)
    verifier, challenge = make_pkce_pair()
    if args.manual:
        redirect_uri = args.redirect_uri
        url = mgr.authorization_url(
            redirect_uri=redirect_uri, state=state, scope=args.scope, code_challenge=challenge
        )
        print(
            f"Open this URL, consent, then paste the URL you are sent to:\n{url}", file=sys.stderr
        )
        if not args.no_browser:
            webbrowser.open(url)
        print("redirected URL: ", end="", file=sys.stderr, flush=True)
        pasted = await asyncio.to_thread(sys.stdin.readline)
        code = _code_from_redirect(pasted.strip(), state)
    else:
        async with _LoopbackReceiver(args.redirect_uri) as receiver:
            redirect_uri = receiver.redirect_uri
            url = mgr.authorization_url(
                redirect_uri=redirect_uri, state=state, scope=args.scope, code_challenge=challenge
            )
            print(f"Open this URL to authorize account {args.account!r}:\n{url}", file=sys.stderr)
            if not args.no_browser:
                webbrowser.open(url)
            print(f"waiting for the redirect on {redirect_uri} ...", file=sys.stderr, flush=True)
            query = await receiver.wait(args.timeout)
            code = _code_from_query(query, state)
    token = await mgr.exchange_code(
        args.account, code, redirect_uri=redirect_uri, code_verifier=verifier
    )
    print(
        f"logged in account {args.account!r}: token valid for {_duration(token.expires_in())}",
        file=sys.stderr,
    )
    return EXIT_OK


def _code_from_redirect(url: str, state: str) -> str:
    if not url:
        raise CliError("no redirected URL was pasted", EXIT_USAGE)
    return _code_from_query(parse_qs(urlsplit(url).query), state)


def _code_from_query(query: dict[str, list[str]], state: str) -> str:
    if "error" in query:
        error = query["error"][0]
        description = query.get("error_description", [""])[0]
        raise CliError(f"authorization was refused: {error} {description}".strip())
    got_state = query.get("state", [""])[0]
    if not secrets.compare_digest(got_state.encode(), state.encode()):
        raise CliError(
            "state mismatch: the redirect did not come from this login attempt "
            "(possible CSRF); nothing was stored"
        )
    code = query.get("code", [""])[0]
    if not code:
        raise CliError("the redirect carried no authorization code")
    return code


class _LoopbackReceiver:
    """A one-request HTTP server on 127.0.0.1 that receives the consent redirect."""

    def __init__(self, redirect_uri: str) -> None:
        parts = urlsplit(redirect_uri)
        if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost"):
            raise CliError(
                f"the loopback receiver needs an http://127.0.0.1:PORT/... or "
                f"http://localhost:PORT/... redirect URI, not {redirect_uri!r}; "
                "use --manual for others",
                EXIT_USAGE,
            )
        self._parts = parts
        self._path = parts.path or "/"
        self._port = parts.port or 80
        self._received: asyncio.Future[dict[str, list[str]]] | None = None
        self._runner: Any = None
        self.redirect_uri = redirect_uri

    async def __aenter__(self) -> _LoopbackReceiver:
        from aiohttp import web

        self._received = asyncio.get_running_loop().create_future()

        async def handle(request: web.Request) -> web.Response:
            assert self._received is not None
            if request.path != self._path:
                return web.Response(status=404, text="not found")
            if self._received.done():
                return web.Response(status=410, text="this login is already complete")
            self._received.set_result(parse_qs(request.query_string))
            return web.Response(
                text="aioamztoken: authorization received. You can close this window.",
                content_type="text/plain",
            )

        app = web.Application()
        app.router.add_get("/{tail:.*}", handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self._port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise CliError(
                f"cannot listen on 127.0.0.1:{self._port} for the redirect: {exc.strerror}",
                EXIT_USAGE,
            ) from None
        port = self._runner.addresses[0][1]
        netloc = f"{self._parts.hostname}:{port}"
        self.redirect_uri = urlunsplit(
            (self._parts.scheme, netloc, self._path, self._parts.query, "")
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait(self, timeout: float) -> dict[str, list[str]]:
        assert self._received is not None
        try:
            return await asyncio.wait_for(asyncio.shield(self._received), timeout)
        except asyncio.TimeoutError:
            raise CliError(
                f"no redirect arrived within {timeout:g} s; run 'aioamztoken login' again"
            ) from None
