"""The loopback receiver of ``aioamztoken login``: one HTTP server on 127.0.0.1 that waits
for the consent redirect of this login, and only this one."""

from __future__ import annotations

import asyncio
import logging
import secrets
import sys
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from ._cli_support import escape, strip_controls
from .cli import EXIT_USAGE, CliError

__all__ = ["LoopbackReceiver"]

# aiohttp's report of a malformed request (a traceback, and the raw request line) goes
# here rather than to the terminal: the command never shows a traceback, and a local
# program must not be able to write to the user's terminal through the receiver.
_quiet = logging.getLogger("aioamztoken.cli.receiver")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


class LoopbackReceiver:
    """Receives the consent redirect on ``redirect_uri`` (``http://127.0.0.1:PORT/path`` or
    ``http://localhost:PORT/path``; port 0 binds a free port, and :attr:`redirect_uri`
    then names it).

    Only a request to the redirect path, with the redirect URI's ``Host``, whose
    ``state`` is this login's, ends the wait, whether it brings a code or an ``error=``.
    Any other callback (a wrong or missing ``state``: a stale tab, a forged link) is
    answered 400 and ignored, and the receiver keeps waiting until the real callback or
    the timeout. Nothing read from a request is echoed with its control characters.

    Amazon's side (Login with Amazon, "Authorization Code Grant"): the authorization
    service sends the browser back to the redirect URI with the ``state`` it was given, on
    success (``code``) and on refusal (``error``, ``error_description``) alike, and
    recommends ``state`` as the guard against cross-site request forgery; so a callback
    without this login's ``state`` cannot be Amazon's answer to it.
    """

    def __init__(self, redirect_uri: str, state: str) -> None:
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
        try:
            port = parts.port
        except ValueError:
            raise CliError(
                f"the redirect URI {redirect_uri!r} has a bad port", EXIT_USAGE
            ) from None
        self._port = 80 if port is None else port  # 0: the kernel picks a free one
        self._state = state
        self._host = ""
        self._received: asyncio.Future[dict[str, list[str]]] | None = None
        self._runner: Any = None
        self.ignored = 0
        """Callbacks refused so far (wrong state, wrong Host)."""
        self.redirect_uri = redirect_uri

    async def __aenter__(self) -> LoopbackReceiver:
        from aiohttp import web

        self._received = asyncio.get_running_loop().create_future()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, logger=_quiet)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self._port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            reason = exc.strerror or type(exc).__name__
            failure = CliError(
                f"cannot listen on 127.0.0.1:{self._port} for the redirect: {reason}",
                EXIT_USAGE,
            )
        else:
            port = self._runner.addresses[0][1]
            self._host = f"{self._parts.hostname}:{port}"
            if self._port == 0:  # name the port picked; otherwise keep the URI as registered
                self.redirect_uri = urlunsplit(
                    (self._parts.scheme, self._host, self._path, self._parts.query, "")
                )
            return self
        raise failure

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: Any) -> Any:
        from aiohttp import web

        assert self._received is not None
        host = (request.headers.get("Host") or "").lower()
        if host != self._host.lower() and not (
            self._port == 80 and host == f"{self._parts.hostname}".lower()
        ):  # a browser leaves out the default port 80
            # Another name for this address (DNS rebinding): not the redirect URI's origin.
            self._ignore(f"a request for another host ({escape(host[:100])!r})")
            return web.Response(status=400, text="wrong host\n")
        if request.method != "GET" or request.path != self._path:
            return web.Response(status=404, text="not found\n")
        if self._received.done():
            return web.Response(status=410, text="this login is already complete\n")
        query = parse_qs(request.query_string)
        got = query.get("state", [""])[0]
        if not got or not secrets.compare_digest(got.encode(), self._state.encode()):
            self._ignore("a callback whose state is not this login's")
            return web.Response(
                status=400,
                text="aioamztoken: this callback does not belong to the login under way "
                "(its state differs); still waiting for the right one.\n",
            )
        self._received.set_result(query)
        if "error" in query:
            error = strip_controls(query["error"][0])[:100]
            return web.Response(
                text=f"aioamztoken: authorization was refused ({error}). "
                "You can close this window.\n"
            )
        return web.Response(
            text="aioamztoken: authorization received. You can close this window.\n"
        )

    def _ignore(self, what: str) -> None:
        self.ignored += 1
        print(f"aioamztoken: ignored {what}; still waiting", file=sys.stderr, flush=True)

    async def wait(self, timeout: float) -> dict[str, list[str]]:
        """The query of this login's callback. Raises CliError after ``timeout`` seconds."""
        assert self._received is not None
        try:
            return await asyncio.wait_for(asyncio.shield(self._received), timeout)
        except asyncio.TimeoutError:
            pass
        raise CliError(f"no redirect arrived within {timeout:g} s; run 'aioamztoken login' again")
