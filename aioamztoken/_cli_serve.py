"""``aioamztoken serve``: the consent app for a small team, at the root of its own server.

``/connect?account=ID`` starts an authorization, ``/callback`` receives it, and
``/accounts`` (the operator page) is served only to loopback clients whose request was not
forwarded by a proxy (no ``Forwarded`` or ``X-Forwarded-For`` header).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import os
import signal
import sys
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

if TYPE_CHECKING:
    from aiohttp import web

    from ._manager import AsyncTokenManager

__all__ = ["add_serve_parser", "serve"]

DEFAULT_PORT = 8000


def add_serve_parser(commands: Any) -> None:
    """Register ``serve`` on the CLI's subcommands."""
    serve = commands.add_parser(
        "serve",
        help="run the web consent app: customers connect accounts in their browser",
        description="Serve /connect?account=ID (redirects to Amazon's consent page), /callback "
        "(stores the account) and /accounts (the operator page, for loopback clients only).",
    )
    serve.add_argument(
        "--redirect-uri",
        required=True,
        help="the public URL of this server's /callback, as registered with Amazon",
    )
    serve.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"port to listen on (default: the redirect URI's port when it is loopback, "
        f"else {DEFAULT_PORT}; 0 picks a free one)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    serve.add_argument("--api", choices=("ads", "sp-api"), default="ads")
    serve.add_argument(
        "--application-id",
        default=os.environ.get("AIOAMZTOKEN_APPLICATION_ID"),
        help="the SP-API app id (amzn1.sp.solution.…); default $AIOAMZTOKEN_APPLICATION_ID",
    )
    serve.add_argument(
        "--draft", action="store_true", help="SP-API app in draft status (adds version=beta)"
    )
    serve.add_argument("--scope", default=None, help="Ads consent scope")


def loopback_operator(request: web.Request) -> bool:
    """Whether ``request`` may see the operator page: a loopback peer, not proxied."""
    if "Forwarded" in request.headers or "X-Forwarded-For" in request.headers:
        return False
    try:
        return ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        return False


def _port(args: argparse.Namespace) -> int:
    if args.port is not None:
        return int(args.port)
    parts = urlsplit(args.redirect_uri)
    if parts.hostname in ("127.0.0.1", "localhost", "::1") and parts.port:
        return int(parts.port)
    return DEFAULT_PORT


async def serve(mgr: AsyncTokenManager, args: argparse.Namespace) -> int:
    """Run until SIGINT or SIGTERM; print the address on standard error."""
    from aiohttp import web

    from .web import consent_app

    app = consent_app(
        mgr,
        redirect_uri=args.redirect_uri,
        api=args.api,
        scope=args.scope,
        operator=loopback_operator,
        application_id=args.application_id,
        draft=args.draft,
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, args.host, _port(args))
        try:
            await site.start()
        except OSError as exc:
            from .cli import EXIT_USAGE, CliError

            raise CliError(
                f"cannot listen on {args.host}:{_port(args)}: {exc.strerror}", EXIT_USAGE
            ) from None
        # Ready for SIGTERM before saying so: a supervisor may stop it at once.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signal.SIGTERM, stop.set)
        host, port = runner.addresses[0][:2]
        origin = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        public = urljoin(args.redirect_uri, "connect")
        print(
            f"serving the consent app on {origin}: send customers to {public}?account=ID; "
            f"operator page {origin}/accounts (loopback only)",
            file=sys.stderr,
            flush=True,
        )
        if not urlsplit(args.redirect_uri).path.rstrip("/").endswith("/callback"):
            # Amazon sends the browser to the redirect URI, and this server answers /callback.
            print(
                f"warning: the redirect URI does not end in /callback, which this server "
                f"answers: Amazon will send customers to {args.redirect_uri}, so a proxy "
                "must map it to /callback",
                file=sys.stderr,
                flush=True,
            )
        await stop.wait()
    finally:
        await runner.cleanup()
    print("stopped", file=sys.stderr)
    return 0
