"""The ``aioamztoken`` command: log in, add, print, list, refresh, remove and migrate accounts.

Configuration comes from flags or from the environment:

================================  ==============================================================
``AIOAMZTOKEN_CLIENT_ID``         the LwA client id (``--client-id``)
``AIOAMZTOKEN_CLIENT_SECRET``     the LwA client secret (environment only: never on argv);
                                  during a rotation several, comma-separated, newest first
``AIOAMZTOKEN_CLIENT_AUTH``       ``post`` (default) or ``basic`` (``--client-auth``)
``AIOAMZTOKEN_AUTHORIZATION_MAX_AGE``  days a grant lasts (``--authorization-max-age``)
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
import time
import webbrowser
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import parse_qs, urlsplit

from . import __version__
from ._cli_support import (
    CommandParser,
    add_global_options,
    ask_yes_no,
    escape,
    interruptible,
    missing_extra,
    open_missing_streams,
    silence_stdout,
)
from ._errors import (
    AccountNotFoundError,
    AmzTokenError,
    InvalidClientError,
    InvalidGrantError,
    StorageError,
    TokenEndpointError,
)
from ._logging import redact
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
    parser = argparse.ArgumentParser(
        prog="aioamztoken",
        description=(
            "Keep Amazon Ads API (Login with Amazon) tokens valid. "
            "Run 'aioamztoken demo' to see it work against the embedded emulator."
        ),
        epilog="exit codes: "
        + "; ".join(f"{code} {meaning}" for code, meaning in EXIT_CODES.items()),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # Global options, accepted before the command and (CommandParser) after it.
    add_global_options(parser, after_command=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CommandParser)

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
    accounts.set_defaults()  # --json is a global option: before or after the command
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

    remove = commands.add_parser(
        "remove",
        help="forget an account (asks first on a terminal; --yes skips the question)",
    )
    remove.add_argument("account")
    remove.add_argument(
        "-y", "--yes", action="store_true", help="do not ask (needed when not on a terminal)"
    )

    migrate = commands.add_parser(
        "migrate", help="copy every account from one store to another, and verify the copy"
    )
    migrate.add_argument("source", metavar="FROM_URL")
    migrate.add_argument("target", metavar="TO_URL")

    emulator = commands.add_parser(
        "emulator",
        help="run the loopback Amazon emulator in the foreground, to try the CLI by hand",
        description="Serve the Login with Amazon + Ads API emulator on 127.0.0.1 until "
        "Ctrl-C, and print the environment variables that point the CLI and the library "
        "at it, with a refresh token of a demo account.",
    )
    emulator.add_argument("--port", type=int, default=0, help="port to listen on (0: a free one)")
    commands.add_parser(
        "demo",
        help="run a realistic session against the embedded emulator (no Amazon account needed)",
        description=(
            "Start the embedded Login with Amazon + Ads API emulator on 127.0.0.1 and drive "
            "many accounts with many concurrent callers, an expired token, a revoked refresh "
            "token and a token the API rejects; print what it took."
        ),
    )
    from ._cli_import import add_import_command

    add_import_command(commands)
    from ._cli_serve import add_serve_parser

    add_serve_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    open_missing_streams()
    try:
        status = _main(argv)
        sys.stdout.flush()  # a closed pipe is found here, not at interpreter exit
    except BrokenPipeError:
        # The reader went away (aioamztoken accounts | head -1): that is not an error.
        silence_stdout()
        return EXIT_OK
    return status


def _main(argv: Sequence[str] | None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    if args.command == "demo":
        from ._demo import main as demo

        return demo(sys.stdout)
    if args.command == "emulator":
        from ._cli_emulator import run_emulator

        return run_emulator(args.port)
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
    except ImportError as exc:  # an optional extra that is not installed
        _fail(missing_extra(exc))
        return EXIT_USAGE


def _fail(message: str) -> None:
    print(f"aioamztoken: error: {escape(' '.join(message.split()))}", file=sys.stderr)


# ---------------------------------------------------------------------- plumbing


def _open_store(args: argparse.Namespace) -> Any:
    from .stores import open_store
    from .stores._url import display_url

    if args.store:
        args.store_shown = display_url(args.store)
        return open_store(args.store)
    url = default_store_url()
    args.store_shown = display_url(url)
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
    # Comma-separated during a rotation, newest first (LwA secrets hold no commas).
    client_secrets = [p.strip() for p in (client_secret or "").split(",") if p.strip()]
    if network and not (client_id and client_secrets):
        raise CliError(
            "set AIOAMZTOKEN_CLIENT_ID (or --client-id) and AIOAMZTOKEN_CLIENT_SECRET",
            EXIT_USAGE,
        )
    store = _open_store(args)
    try:
        async with AsyncTokenManager(
            client_id or PLACEHOLDER,
            client_secrets or PLACEHOLDER,
            store=store,
            region=Region.parse(args.region),
            token_url=args.token_url,
            authorization_base_url=args.consent_url,
            auto_refresh=False,
            client_auth=args.client_auth,
            authorization_max_age=(
                None if args.authorization_max_age is None else args.authorization_max_age * 86400
            ),
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
    if command == "import":
        from ._cli_import import run_import

        async with _manager(args, network=False) as mgr:
            return await run_import(mgr, args)
    if command == "add":
        refresh_token = _read_secret_from_stdin()
        async with _manager(args, network=False) as mgr:
            await mgr.add_account(args.account, refresh_token)
        print(f"added account {args.account!r}", file=sys.stderr)
        return EXIT_OK
    if command == "remove":
        interactive = sys.stdin is not None and sys.stdin.isatty()
        if not args.yes and not interactive:
            raise CliError("remove needs --yes when standard input is not a terminal", EXIT_USAGE)
        async with _manager(args, network=False) as mgr:
            if args.account not in await mgr.accounts():
                raise AccountNotFoundError(args.account)
            if not args.yes and not ask_yes_no(
                f"remove account {args.account!r} from {args.store_shown}?"
            ):
                print("nothing was removed", file=sys.stderr)
                return EXIT_FAILURE
            await mgr.remove_account(args.account)
        print(f"removed account {args.account!r}", file=sys.stderr)
        return EXIT_OK
    if command == "accounts":
        async with _manager(args, network=False) as mgr:
            if args.watch:
                return await _watch(mgr, args)
            return await _accounts(mgr, as_json=args.json, store=args.store_shown)
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
        if command == "serve":
            from ._cli_serve import serve

            return await serve(mgr, args)
    raise CliError(f"unknown command {command!r}", EXIT_USAGE)  # pragma: no cover


def _read_secret_from_stdin() -> str:
    if sys.stdin is None:
        raise CliError("no standard input to read the refresh token from", EXIT_USAGE)
    if sys.stdin.isatty():
        import getpass

        try:
            with interruptible():  # Ctrl-C: KeyboardInterrupt, not ignored
                value = getpass.getpass("refresh token (input hidden): ")
        except EOFError:  # Ctrl-D
            print(file=sys.stderr)
            raise CliError("no refresh token was entered; nothing was stored", EXIT_USAGE) from None
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


async def _accounts(mgr: AsyncTokenManager, *, as_json: bool, store: str = "") -> int:
    rows = []
    for account_id in await mgr.accounts():
        status = await mgr.status(account_id)
        rows.append(status)
    if store:  # on stderr: stdout stays the table (or JSON) alone
        print(f"aioamztoken: {len(rows)} account(s) in {store}", file=sys.stderr)
    if as_json:
        payload = [
            {
                "account_id": s.account_id,
                "state": _state_name(s, "not-yet-refreshed"),
                "expires_at": s.expires_at,
                "expires_in": None if s.expires_in is None else round(s.expires_in, 1),
                "authorized_at": s.authorized_at,
                "reauth_due_at": s.reauth_due_at,
            }
            for s in rows
        ]
        print(json.dumps(payload, indent=2))
        return EXIT_OK
    if not rows:
        print("no accounts", file=sys.stderr)
        return EXIT_OK
    names = [escape(s.account_id) for s in rows]
    states = [_state_name(s, "not yet refreshed") for s in rows]
    notes = [_reauth_note(s.reauth_due_at) for s in rows]
    width = max(len("ACCOUNT"), *(len(n) for n in names))
    state_width = max(13, *(len(state) for state in states))
    header = f"{'ACCOUNT':<{width}}  {'STATE':<{state_width}}  EXPIRES IN"
    print(f"{header:<{width + state_width + 14}}  NOTE" if any(notes) else header)
    for s, name, state, note in zip(rows, names, states, notes, strict=True):
        line = f"{name:<{width}}  {state:<{state_width}}  {_duration(s.expires_in)}"
        print(f"{line:<{width + state_width + 14}}  {note}" if note else line)
    return EXIT_OK


def _reauth_note(due: float | None, warning: float = 30 * 86400) -> str:
    """"re-authorize by <date>" once the date is within ``warning`` seconds, else ""."""
    if due is None or due - time.time() > warning:
        return ""
    date = time.strftime("%Y-%m-%d", time.gmtime(due))
    return f"re-authorize by {date}" + (" (overdue)" if due <= time.time() else "")


def _state_name(status: Any, never: str) -> str:
    # An account added with 'add' has no access token yet: not expired, just not fetched.
    if status.state is AccountState.NEEDS_REAUTH:
        return "needs re-auth" if " " in never else status.state.value
    if status.state is AccountState.EXPIRED and status.expires_at is None:
        return never
    return str(status.state.value)


async def _watch(mgr: AsyncTokenManager, args: argparse.Namespace) -> int:
    from ._cli_live import watch_accounts

    if not args.interval > 0 or (args.count is not None and args.count < 1):
        raise CliError("--interval must be positive and --count at least 1", EXIT_USAGE)
    return await watch_accounts(
        mgr,
        interval=args.interval,
        count=args.count,
        plain=lambda: _accounts(mgr, as_json=args.json, store=args.store_shown),
        as_json=args.json,
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
        _fail(f"{account_id}: {reason}")
    return EXIT_OK if not failures else EXIT_FAILURE


async def _migrate(source_url: str, target_url: str) -> int:
    from .stores import migrate, open_store

    source = open_store(source_url)
    try:
        await _check_source(source, source_url)
    except BaseException:
        closer = getattr(source, "aclose", None)
        if closer is not None:
            await closer()
        raise
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


async def _check_source(source: Any, url: str) -> None:
    """Refuse a source that does not exist or holds no account: a typo in its URL must not
    look like a successful (empty) migration, after which the user deletes the original."""
    from .stores._url import display_url

    shown = display_url(url)
    location = getattr(source, "path", None)
    if isinstance(location, str) and not await asyncio.to_thread(os.path.exists, location):
        raise CliError(f"the source store {shown} does not exist; nothing was written", EXIT_USAGE)
    if not await source.accounts():
        raise CliError(
            f"the source store {shown} holds no accounts; nothing was written", EXIT_USAGE
        )


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
        with interruptible():  # a read in a thread would outlive Ctrl-C, until Enter
            pasted = sys.stdin.readline()
        code = _code_from_redirect(pasted.strip(), state)
    else:
        from ._cli_login import LoopbackReceiver

        async with LoopbackReceiver(args.redirect_uri, state) as receiver:
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
    # The state first: an error= of another login (or a forged one) is not this one's answer.
    got_state = query.get("state", [""])[0]
    if not secrets.compare_digest(got_state.encode(), state.encode()):
        raise CliError(
            "state mismatch: the redirect did not come from this login attempt "
            "(possible CSRF); nothing was stored"
        )
    if "error" in query:
        error = query["error"][0]
        description = query.get("error_description", [""])[0]
        raise CliError(f"authorization was refused: {error} {redact(description)}".strip())
    code = query.get("code", [""])[0]
    if not code:
        raise CliError("the redirect carried no authorization code")
    return code
