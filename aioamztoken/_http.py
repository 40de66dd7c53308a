"""The one place that talks HTTP to the token endpoint: pool bound, retries, error mapping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator, Sequence
from typing import Any

import aiohttp
import backoff
from backoff.types import Details

from ._errors import (
    InvalidClientError,
    InvalidGrantError,
    ManagerClosedError,
    TokenEndpointError,
    TokenRefreshError,
)
from ._logging import audit_logger, http_logger
from ._lwa import MAX_BODY_BYTES, TokenRequest, parse_retry_after, parse_token_response
from ._models import Token
from ._scrub import scrubbed
from ._telemetry import NO_TELEMETRY, Telemetry

__all__ = ["ClientSecrets", "RetryPolicy", "TokenEndpoint"]


class ClientSecrets:
    """The application's client secrets, newest first, and the one the endpoint accepts.

    During a rotation Amazon accepts the old and the new secret for a while (7 days for
    SP-API apps, which must rotate every 180 days); a secret it no longer accepts is
    answered ``401 invalid_client``. :meth:`order` puts the last accepted secret first, so
    once one is accepted every account uses it. :meth:`replace` swaps the list at run
    time. Never shows a secret in its repr. Not thread-safe (one event loop).
    """

    __slots__ = ("_accepted", "_secrets", "generation")

    def __init__(self, secrets: str | Sequence[str]) -> None:
        self._secrets: tuple[str, ...] = ()
        self._accepted: str | None = None
        self.generation = 0
        """Bumped by :meth:`replace`."""
        self.replace(secrets)

    def __repr__(self) -> str:
        preferred = self.number(self.preferred)
        return f"<ClientSecrets count={len(self._secrets)} preferred=#{preferred}>"

    def __len__(self) -> int:
        return len(self._secrets)

    @staticmethod
    def parse(secrets: str | Sequence[str]) -> tuple[str, ...]:
        """``secrets`` as a tuple; raise ``ValueError`` for none, an empty one or a non-string."""
        items = (secrets,) if isinstance(secrets, str) else tuple(secrets)
        if not items or any(not isinstance(s, str) or not s for s in items):
            raise ValueError(
                "client_secret must be a non-empty string, or a non-empty sequence of them "
                "(newest first)"
            )
        return tuple(dict.fromkeys(items))  # a secret listed twice is tried once

    def replace(self, secrets: str | Sequence[str]) -> None:
        """Use ``secrets`` from now on, the first one first (the caller's order wins)."""
        self._secrets = self.parse(secrets)
        self._accepted = None
        self.generation += 1

    @property
    def preferred(self) -> str:
        """The secret tried first: the last one accepted, else the newest."""
        return self._accepted if self._accepted is not None else self._secrets[0]

    def order(self) -> list[str]:
        """Every secret, in the order to try them: the preferred one, then the others."""
        first = self.preferred
        return [first, *(s for s in self._secrets if s != first)]

    def number(self, secret: str) -> int:
        """The 1-based position of ``secret`` in the list (0 if no longer listed)."""
        try:
            return self._secrets.index(secret) + 1
        except ValueError:
            return 0

    def accepted(self, secret: str, generation: int | None = None) -> None:
        """The endpoint accepted ``secret``: try it first from now on.

        Ignored when the list was replaced since ``generation``: a request signed before
        a swap must not undo the order the caller just gave.
        """
        if secret in self._secrets and generation in (None, self.generation):
            self._accepted = secret


class RetryPolicy:
    """How hard to try the token endpoint before giving up.

    Exponential backoff with full jitter (``base * 2**n``, capped at ``cap`` seconds),
    at most ``max_tries`` attempts within ``max_time`` seconds. A ``Retry-After`` header
    on a 429 or 5xx answer replaces the computed wait. Only transient failures retry:
    5xx, 408, 429, timeouts and connection errors. An unusable 200 is never retried: the
    server may have acted on the request (spent a code, rotated a refresh token).
    """

    __slots__ = ("base", "cap", "max_time", "max_tries", "request_timeout")

    def __init__(
        self,
        *,
        max_tries: int = 8,
        max_time: float = 30.0,
        request_timeout: float = 10.0,
        base: float = 0.5,
        cap: float = 8.0,
    ) -> None:
        if max_tries < 1:
            raise ValueError("max_tries must be at least 1")
        if max_time <= 0 or request_timeout <= 0 or base < 0 or cap < 0:
            raise ValueError("retry times must be positive")
        self.max_tries = max_tries
        self.max_time = max_time
        self.request_timeout = request_timeout
        self.base = base
        self.cap = cap

    def __repr__(self) -> str:
        return (
            f"RetryPolicy(max_tries={self.max_tries}, max_time={self.max_time}, "
            f"request_timeout={self.request_timeout}, base={self.base}, cap={self.cap})"
        )

    def waits(self) -> Generator[float | None, BaseException | None, None]:
        """The wait generator that :mod:`backoff` drives: it is sent each failure."""
        exc = yield None
        attempt = 0
        while True:
            retry_after = getattr(exc, "retry_after", None)
            if retry_after is not None:
                delay = float(retry_after)
            else:
                delay = backoff.full_jitter(min(self.cap, self.base * 2**attempt))
            attempt += 1
            exc = yield delay


class TokenEndpoint:
    """POSTs :class:`TokenRequest` objects with a bounded pool and retries.

    At most ``max_concurrent`` requests are in flight at once; others queue. Requests
    never pass through the middlewares of a user's session (``middlewares=()``), so a
    token request can never recurse into our own middleware.
    """

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession | None,
        max_concurrent: int,
        policy: RetryPolicy,
        secrets: ClientSecrets | None = None,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent_refreshes must be at least 1")
        self._user_session = session
        self._own_session: aiohttp.ClientSession | None = None
        self._max_concurrent = max_concurrent
        self._slots: asyncio.Semaphore | None = None
        self.policy = policy
        self.secrets = secrets
        self.in_flight = 0
        self.closed = False
        # Set when the manager starts closing: no retry is made after it, and requests
        # already sent (the tasks in ``sending``) may finish; the manager cancels the rest.
        self.closing = False
        self.sending: set[asyncio.Task[Any]] = set()
        self._not_before = 0.0  # monotonic time before which no request is sent (429)
        self.telemetry: Telemetry = NO_TELEMETRY

    def _session(self) -> aiohttp.ClientSession:
        if self.closed:
            raise ManagerClosedError("the token manager is closed; create a new one")
        if self._user_session is not None:
            return self._user_session
        if self._own_session is None or self._own_session.closed:
            self._own_session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.policy.request_timeout)
            )
        return self._own_session

    async def aclose(self) -> None:
        """Close the session this object owns; a user's session is left open.

        No request is sent afterwards: :meth:`request` raises :class:`ManagerClosedError`.
        """
        self.closed = True
        if self._own_session is not None:
            await self._own_session.close()
            self._own_session = None

    async def request(
        self,
        request: TokenRequest,
        *,
        account_id: str,
        previous_refresh_token: str | None = None,
        deadline: float | None = None,
    ) -> tuple[Token, int]:
        """Send ``request``, signed with each client secret in turn until one is accepted.

        With :attr:`secrets` set, the request is signed with the preferred secret; an
        ``invalid_client`` answer moves on at once (no backoff) to the next, within the
        same budget. Client authentication comes before the grant is looked at, so a
        code is not spent by a rejected secret. The first secret accepted (answered with
        a token, or with ``invalid_grant``, which the endpoint says only of a client it
        authenticated) becomes the preferred one. :class:`InvalidClientError` is raised
        only once every secret has been rejected, saying how many were tried
        (``secrets_tried``). Otherwise as :meth:`_send`; ``attempts`` counts the requests
        for every secret.
        """
        if deadline is None:
            deadline = time.monotonic() + self.policy.max_time
        secrets = self.secrets
        if secrets is None:
            return await self._send(
                request,
                account_id=account_id,
                previous_refresh_token=previous_refresh_token,
                deadline=deadline,
            )
        tried: list[str] = []
        rejected: list[int] = []
        attempts = 0
        refusal: InvalidClientError | None = None
        # The list is read again after each refusal: set_client_secrets() may have
        # swapped it while this request was in flight.
        while (candidate := next((s for s in secrets.order() if s not in tried), None)) is not None:
            tried.append(candidate)
            generation = secrets.generation
            try:
                token, used = await self._send(
                    request.with_client_secret(candidate),
                    account_id=account_id,
                    previous_refresh_token=previous_refresh_token,
                    deadline=deadline,
                )
            except InvalidClientError as exc:
                attempts += exc.attempts
                rejected.append(secrets.number(candidate))
                refusal = exc
                continue
            except InvalidGrantError as exc:
                # The server judged the grant, so it authenticated the client first
                # (RFC 6749 section 5.2): this secret works; only the grant does not.
                self._accepted(secrets, candidate, generation, rejected, account_id)
                exc.attempts += attempts
                raise
            except (TokenEndpointError, TokenRefreshError) as exc:
                exc.attempts += attempts
                raise
            self._accepted(secrets, candidate, generation, rejected, account_id)
            return token, attempts + used
        assert refusal is not None
        count = len(tried)
        error = InvalidClientError(
            f"{refusal}; "
            + ("tried 1 client secret" if count == 1 else f"tried all {count} client secrets"),
            error=refusal.error,
            description=refusal.description,
            status=refusal.status,
        )
        error.attempts = attempts
        error.secrets_tried = count
        if count > 1:
            audit_logger.info(
                "client-secret account=%r outcome=failed: all %d secrets rejected",
                account_id,
                count,
            )
        raise error

    @staticmethod
    def _accepted(
        secrets: ClientSecrets, secret: str, generation: int, rejected: list[int], account_id: str
    ) -> None:
        """``secret`` passed client authentication: prefer it, and say so after refusals."""
        secrets.accepted(secret, generation)
        if not rejected:
            return
        names = [f"#{n}" if n else "a secret no longer listed" for n in rejected]
        before = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
        audit_logger.info(
            "client-secret account=%r outcome=ok: secret #%d of %d was accepted after %s %s "
            "rejected",
            account_id,
            secrets.number(secret),
            len(secrets),
            before,
            "was" if len(names) == 1 else "were",
        )

    async def _send(
        self,
        request: TokenRequest,
        *,
        account_id: str,
        previous_refresh_token: str | None = None,
        deadline: float | None = None,
    ) -> tuple[Token, int]:
        """Send ``request`` until it succeeds, is refused, or the budget is spent.

        ``deadline`` (``time.monotonic()`` seconds) ends the budget early: by default it
        is ``max_time`` from now. No attempt outlives it, and a ``Retry-After`` reaching
        past it gives up at once rather than retrying before the server allows.

        Returns the token and the number of attempts. Raises the typed errors of
        :func:`parse_token_response`, each with an ``attempts`` count; a
        :class:`TokenEndpointError` also carries the last status.
        """
        attempts = 0
        if deadline is None:
            deadline = time.monotonic() + self.policy.max_time

        async def attempt() -> Token:
            nonlocal attempts
            attempts += 1
            return await self._attempt(
                request, account_id, attempts, previous_refresh_token, deadline
            )

        def give_up(exc: Exception) -> bool:
            if self.closing or not _retryable(getattr(exc, "status", None)):
                return True
            # Retrying before the server allows helps no one: stop if it asks for more
            # time than the budget has left.
            retry_after = getattr(exc, "retry_after", None)
            return retry_after is not None and time.monotonic() + retry_after > deadline

        def log_backoff(details: Details) -> None:
            exc = details.get("exception")
            http_logger.debug(
                "token request for account %r failed (attempt %d, status %s): retrying in %.2f s",
                account_id,
                details["tries"],
                getattr(exc, "status", None),
                details.get("wait", 0.0),
            )

        def log_giveup(details: Details) -> None:
            http_logger.debug(
                "token request for account %r: giving up after %d attempts in %.2f s",
                account_id,
                details["tries"],
                details["elapsed"],
            )

        waits: Any = self.policy.waits  # backoff sends each failure into it
        retrying = backoff.on_exception(
            waits,
            TokenEndpointError,
            max_tries=self.policy.max_tries,
            max_time=max(0.0, deadline - time.monotonic()),
            jitter=None,
            giveup=give_up,
            logger=None,
            on_backoff=log_backoff,
            on_giveup=log_giveup,
        )(attempt)
        try:
            token: Token = await retrying()
        except (TokenEndpointError, TokenRefreshError) as exc:
            exc.attempts = attempts
            raise
        return token, attempts

    async def _wait_for_a_slot(self, deadline: float) -> None:
        """Take one of the ``max_concurrent`` slots, honouring a manager-wide 429 pause:
        waited out without holding a slot, or, when it outlasts the budget, given up now."""
        assert self._slots is not None
        while True:
            pause = self._not_before - time.monotonic()
            if pause > 0:
                if self._not_before > deadline:
                    raise TokenEndpointError(
                        f"the token endpoint asked for a pause of {pause:.0f} s (429), longer "
                        "than the retry budget",
                        status=429,
                        retry_after=pause,
                    )
                await asyncio.sleep(pause)
            await self._slots.acquire()
            if self._not_before <= time.monotonic():
                return
            self._slots.release()  # a 429 arrived while we queued: wait it out first

    async def _attempt(
        self,
        request: TokenRequest,
        account_id: str,
        attempt: int,
        previous_refresh_token: str | None,
        deadline: float,
    ) -> Token:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._max_concurrent)
        await self._wait_for_a_slot(deadline)
        try:
            timeout = min(self.policy.request_timeout, deadline - time.monotonic())
            if timeout <= 0:
                raise TokenEndpointError(
                    "the retry budget ran out before the token endpoint answered", status=None
                )
            self.in_flight += 1
            started = time.monotonic()
            sent_at = time.time()
            # aiohttp's errors may hold the request (the form has client_secret): they are
            # kept only as a scrubbed cause, raised outside the except block below.
            failure: BaseException | None = None
            task = asyncio.current_task()
            if task is not None:
                self.sending.add(task)
            try:
                async with self.telemetry.post(self._session(), request.grant_type)(
                    request.url,
                    data=request.body,
                    headers=request.headers,
                    timeout=aiohttp.ClientTimeout(total=timeout),
                    allow_redirects=False,
                    raise_for_status=False,
                    middlewares=(),
                ) as response:
                    body = await _read_capped(response)
                    status = response.status
                    content_type = response.headers.get("Content-Type")
                    retry_after = response.headers.get("Retry-After")
            except asyncio.TimeoutError as exc:
                failure = exc
            except RuntimeError as exc:
                if self._user_session is None or not self._user_session.closed:
                    raise
                failure = exc
            except aiohttp.ClientError as exc:
                failure = exc
            finally:
                self.in_flight -= 1
                if task is not None:
                    self.sending.discard(task)
        finally:
            self._slots.release()
        if failure is not None:
            raise self._failure(failure, request, account_id, attempt, timeout)
        if status == 429:
            wait = parse_retry_after(retry_after)
            if wait:
                self._not_before = max(self._not_before, time.monotonic() + wait)
        http_logger.debug(
            "token endpoint answered %d for account %r in %.0f ms (attempt %d, %s grant)",
            status,
            account_id,
            (time.monotonic() - started) * 1000,
            attempt,
            request.grant_type,
        )
        return parse_token_response(
            status,
            body,
            sent_at=sent_at,
            content_type=content_type,
            retry_after=retry_after,
            previous_refresh_token=previous_refresh_token,
            secrets=request.secrets,
        )

    def _failure(
        self,
        exc: BaseException,
        request: TokenRequest,
        account_id: str,
        attempt: int,
        timeout: float,
    ) -> Exception:
        """The error to raise, outside any ``except`` block, for a request that got no answer."""
        if isinstance(exc, asyncio.TimeoutError):
            http_logger.debug(
                "token request for account %r timed out after %.1f s (attempt %d)",
                account_id,
                timeout,
                attempt,
            )
            error: Exception = TokenEndpointError(
                f"token endpoint did not answer within {timeout:g} s", status=None
            )
        elif isinstance(exc, RuntimeError):
            error = ManagerClosedError(
                "the aiohttp session given to the manager was closed; keep it open "
                "until the manager is closed"
            )
        else:
            http_logger.debug(
                "token request for account %r failed: %s (attempt %d)",
                account_id,
                type(exc).__name__,
                attempt,
            )
            error = TokenEndpointError(
                f"could not reach the token endpoint: {type(exc).__name__}", status=None
            )
        error.__cause__ = scrubbed(exc, request.secrets)
        return error

def _retryable(status: int | None) -> bool:
    """Whether a :class:`TokenEndpointError` with this status is worth another attempt:
    no answer, 408, 429 or 5xx. Anything else (an unusable 200, a garbled 4xx) was
    answered by a server that may have acted on it, and would answer the same again."""
    return status is None or status in (408, 429) or status >= 500


async def _read_capped(response: aiohttp.ClientResponse) -> bytes:
    """The body, or :class:`TokenEndpointError` once it passes ``MAX_BODY_BYTES``: never
    more than that (and one chunk) is held in memory."""
    length = response.content_length
    if length is None or length <= MAX_BODY_BYTES:
        body = bytearray()
        async for chunk in response.content.iter_chunked(64 * 1024):
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                break
        else:
            return bytes(body)
    raise TokenEndpointError(
        f"token endpoint answered {response.status} with a body over {MAX_BODY_BYTES} bytes",
        status=response.status,
    )
