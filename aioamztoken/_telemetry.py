"""OpenTelemetry metrics and spans for the token manager; nothing at all without the API.

The manager holds one :class:`Telemetry`. Without ``opentelemetry-api`` installed (the
``[otel]`` extra) and without providers passed in, it is :data:`NO_TELEMETRY`, whose
methods do nothing, and ``opentelemetry`` is never imported. The hot path (a fresh
cached token) never reaches this module.

Metrics (the meter is named ``aioamztoken``):

===============================  ================  ===========================================
``aioamztoken.refreshes``        counter           ``outcome`` (ok, failed, needs-reauth) and
                                                   ``reason`` (expired, due, background, forced,
                                                   rejected)
``aioamztoken.refresh.duration`` histogram, s      the same attributes
``aioamztoken.token_requests``   counter           ``status``: the HTTP status as a string
                                                   ("200", "429"), or "error" when none came
``aioamztoken.token_requests``   up-down counter   token requests in flight
``.active``
``aioamztoken.lock.wait``        histogram, s      waits for a store's cross-process lock
``aioamztoken.http.retries``     counter           ``api``: resends after a rejected token
``aioamztoken.accounts``         observable gauge  cached accounts by ``state`` (fresh, due,
                                                   expired, needs-reauth)
===============================  ================  ===========================================

No account id is a metric attribute (10,000 accounts would make 10,000 series); it is an
attribute of the spans: ``aioamztoken.refresh`` and ``aioamztoken.exchange_code``, with
``aioamztoken.account_id``, ``aioamztoken.attempts`` and ``aioamztoken.reason``, and one
``POST`` child span (kind CLIENT) per token-endpoint HTTP call. A failure sets an error
status whose description is the exception type, ``error.type`` and an ``exception`` event
with ``exception.type`` only: messages may quote server text, so none is recorded, and
neither is any token, code, secret or request body.

A refresh span is started only once the refresh does more than read the store (it waits
for the store's lock, sends a token request, or fails), so that loading 10,000 fresh
accounts at start-up makes no span. Background refreshes start a trace of their own;
others are children of the caller's current span.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import weakref
from collections.abc import Callable, Coroutine, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from ._errors import AccountNotFoundError, InvalidGrantError

if TYPE_CHECKING:
    from ._models import Token

__all__ = ["NO_TELEMETRY", "Telemetry", "telemetry_for"]

_T = TypeVar("_T")
_NAME = "aioamztoken"
#: The refresh reasons of the ``refreshes`` counter; a first load of an account whose
#: stored token is missing or expired is an ``expired`` refresh.
_REASONS = {"loaded": "expired"}
_STATES = ("fresh", "due", "expired", "needs-reauth")
_NULL = contextlib.nullcontext()


class Telemetry:
    """No instruments, no spans: what a manager has without OpenTelemetry.

    Every method is a cheap no-op; :class:`_OtelTelemetry` overrides them.
    """

    enabled = False

    def refresh(
        self, work: Coroutine[Any, Any, Token], account_id: str, reason: str
    ) -> Coroutine[Any, Any, Token]:
        """``work`` (the refresh of ``account_id``), traced and counted when enabled."""
        return work

    def exchange(
        self, work: Coroutine[Any, Any, Token], account_id: str
    ) -> Coroutine[Any, Any, Token]:
        """``work`` (a code exchange), traced when enabled."""
        return work

    def post(self, session: Any, grant_type: str) -> Callable[..., Any]:
        """``session.post``; when enabled, each call it makes is a ``POST`` child span."""
        return session.post  # type: ignore[no-any-return]

    def lock_wait(self) -> contextlib.AbstractContextManager[None]:
        """Around the wait for a store's lock: records ``aioamztoken.lock.wait``."""
        return _NULL

    def http_retry(self, api: str) -> None:
        """An HTTP request is sent again after its token was rejected."""


#: The telemetry of a manager without OpenTelemetry.
NO_TELEMETRY = Telemetry()


def telemetry_for(
    entries: Callable[[], Iterable[Any]],
    meter_provider: Any = None,
    tracer_provider: Any = None,
) -> Telemetry:
    """The telemetry for a manager whose cached entries ``entries()`` returns.

    ``None`` providers mean OpenTelemetry's global ones when ``opentelemetry-api`` is
    installed; without it (and with no provider given) this is :data:`NO_TELEMETRY`,
    and nothing of OpenTelemetry is imported.
    """
    try:
        from opentelemetry import metrics, trace
    except ImportError:
        if meter_provider is None and tracer_provider is None:
            return NO_TELEMETRY
        raise ImportError(
            "meter_provider/tracer_provider need opentelemetry-api: pip install 'aioamztoken[otel]'"
        ) from None
    if meter_provider is None:
        meter_provider = metrics.get_meter_provider()
    if tracer_provider is None:
        tracer_provider = trace.get_tracer_provider()
    return _OtelTelemetry(entries, meter_provider, tracer_provider)


class _Instruments:
    """The instruments of one meter provider, shared by every manager that uses it.

    A meter keeps the first instrument registered under a name and ignores the
    callbacks of later ones, so each provider gets one set, and the ``accounts``
    gauge sums over every live manager registered here.
    """

    def __init__(self, meter_provider: Any) -> None:
        from . import __version__

        try:
            self._provider: Callable[[], Any] = weakref.ref(meter_provider)
        except TypeError:  # cannot be weakly referenced: held here
            self._provider = lambda: meter_provider
        meter = meter_provider.get_meter(_NAME, __version__)
        self.refreshes = meter.create_counter(
            "aioamztoken.refreshes",
            unit="{refresh}",
            description="Token refreshes by outcome (ok, failed, needs-reauth) and reason",
        )
        self.duration = meter.create_histogram(
            "aioamztoken.refresh.duration",
            unit="s",
            description="How long a refresh took, lock wait and retries included",
        )
        self.requests = meter.create_counter(
            "aioamztoken.token_requests",
            unit="{request}",
            description="HTTP requests to the token endpoint by status ('error': no answer)",
        )
        self.active = meter.create_up_down_counter(
            "aioamztoken.token_requests.active",
            unit="{request}",
            description="Token endpoint requests in flight",
        )
        self.lock_wait = meter.create_histogram(
            "aioamztoken.lock.wait",
            unit="s",
            description="Waits for a store's cross-process lock",
        )
        self.retries = meter.create_counter(
            "aioamztoken.http.retries",
            unit="{retry}",
            description="API requests sent again after their token was rejected",
        )
        self._sources: weakref.WeakSet[_OtelTelemetry] = weakref.WeakSet()
        self._guard = threading.Lock()
        meter.create_observable_gauge(
            "aioamztoken.accounts",
            callbacks=[self._observe],
            unit="{account}",
            description="Cached accounts by state",
        )

    def effective(self) -> Any:
        """The provider these instruments record into (``None`` once it is gone)."""
        provider = self._provider()
        return None if provider is None else _effective(provider)

    def add_source(self, telemetry: _OtelTelemetry) -> None:
        with self._guard:
            self._sources.add(telemetry)

    def _observe(self, options: Any) -> Iterator[Any]:
        from opentelemetry.metrics import Observation

        counts = dict.fromkeys(_STATES, 0)
        # The managers of every set that feeds the same provider: only one gauge callback
        # per provider is kept (see _instruments), so it counts them all.
        target = self.effective()
        with _all_guard:  # never held while the SDK is called: no lock-order inversion
            peers = [
                i for i in _all if i is self or (target is not None and i.effective() is target)
            ]
        sources: list[_OtelTelemetry] = []
        for peer in peers:
            with peer._guard:
                sources.extend(peer._sources)
        now = time.time()
        for source in sources:
            for entry in source.snapshot():
                counts[_state(entry, now)] += 1
        for state, count in counts.items():
            yield Observation(count, {"state": state})


def _state(entry: Any, now: float) -> str:
    if entry.needs_reauth:
        return "needs-reauth"
    if not entry.access_token or now >= entry.usable_until:
        return "expired"
    if now >= entry.due_at:
        return "due"
    return "fresh"


_registry: weakref.WeakKeyDictionary[Any, _Instruments] = weakref.WeakKeyDictionary()
#: Every set of instruments made, for finding the one of a provider (see _instruments).
_all: weakref.WeakSet[_Instruments] = weakref.WeakSet()
_all_guard = threading.Lock()
_registry_guard = threading.Lock()


def _effective(meter_provider: Any) -> Any:
    """The provider that ``meter_provider`` records into.

    The global provider handed out before ``metrics.set_meter_provider()`` is a proxy
    that forwards to the provider set later: a manager made before that call and one
    made after, given ``None`` or the provider itself, share one set of instruments.
    """
    if type(meter_provider).__name__ == "_ProxyMeterProvider":
        from opentelemetry import metrics

        return metrics.get_meter_provider()
    return meter_provider


def _instruments(meter_provider: Any) -> _Instruments:
    """The one set of instruments for ``meter_provider``, made on first use.

    A meter keeps the first instrument of a name (warning about later ones) and only its
    gauge callback: a second set on the same provider would lose its accounts.
    """
    with _registry_guard:
        target = _effective(meter_provider)
        with _all_guard:
            same = [i for i in _all if i.effective() is target]
        if same:
            return same[0]
        found = _Instruments(meter_provider)
        with _all_guard:
            _all.add(found)
        with contextlib.suppress(TypeError):  # kept alive as long as its provider
            _registry[meter_provider] = found
        return found


class _Operation:
    """A refresh or code exchange under way in one task: its span, made on demand."""

    __slots__ = ("account_id", "attempts", "done", "name", "reason", "root", "span", "started")

    def __init__(self, name: str, account_id: str, reason: str, *, root: bool) -> None:
        self.name = name
        self.account_id = account_id
        self.reason = reason
        self.root = root
        self.attempts = 0
        self.done = False
        self.span: Any = None
        self.started = time.monotonic()


class _OtelTelemetry(Telemetry):
    """Instruments and spans from the given OpenTelemetry providers."""

    enabled = True

    def __init__(
        self, entries: Callable[[], Iterable[Any]], meter_provider: Any, tracer_provider: Any
    ) -> None:
        from opentelemetry import context, trace

        from . import __version__

        self._context = context
        self._trace = trace
        self._entries = entries
        self._instruments = _instruments(meter_provider)
        self._instruments.add_source(self)
        self._tracer = tracer_provider.get_tracer(_NAME, __version__)
        # The operation each refresh or exchange task is running. Kept by task, not in a
        # context variable: the timers a refresh schedules copy the context, and would keep
        # every span alive for a token's lifetime.
        self._operations: dict[asyncio.Task[Any], _Operation] = {}

    def _current(self) -> _Operation | None:
        task = asyncio.current_task()
        op = None if task is None else self._operations.get(task)
        return None if op is None or op.done else op

    def snapshot(self) -> list[Any]:
        """The manager's cached entries now (read from the metric reader's thread)."""
        for _ in range(3):
            try:
                return list(self._entries())
            except RuntimeError:  # changed size while copied: try again
                continue
        return []

    # -- spans ------------------------------------------------------------------------

    def _open(self, op: _Operation) -> Any:
        """The span of ``op``, started (back at the start of ``op``) if it was not.

        Its parent is the caller's current span: nothing is attached to the context of a
        refresh task, which is a copy of its caller's. A background refresh is a root.
        """
        if op.span is None:
            started_ns = time.time_ns() - int((time.monotonic() - op.started) * 1e9)
            op.span = self._tracer.start_span(
                op.name,
                context=self._context.Context() if op.root else None,
                kind=self._trace.SpanKind.INTERNAL,
                attributes={
                    "aioamztoken.account_id": op.account_id,
                    "aioamztoken.reason": op.reason,
                },
                start_time=started_ns,
            )
        return op.span

    def refresh(
        self, work: Coroutine[Any, Any, Token], account_id: str, reason: str
    ) -> Coroutine[Any, Any, Token]:
        reason = _REASONS.get(reason, reason)
        op = _Operation("aioamztoken.refresh", account_id, reason, root=reason == "background")
        return self._run(op, work, lazy=True)

    def exchange(
        self, work: Coroutine[Any, Any, Token], account_id: str
    ) -> Coroutine[Any, Any, Token]:
        op = _Operation("aioamztoken.exchange_code", account_id, "authorization_code", root=False)
        return self._run(op, work, lazy=False)

    async def _run(self, op: _Operation, work: Coroutine[Any, Any, _T], *, lazy: bool) -> _T:
        task = asyncio.current_task()
        assert task is not None
        self._operations[task] = op
        try:
            if not lazy:
                self._open(op)
            try:
                result = await work
            except BaseException as exc:
                self._end(op, exc)
                raise
            self._end(op, None)
            return result
        finally:
            op.done = True
            del self._operations[task]

    def _end(self, op: _Operation, exc: BaseException | None) -> None:
        refresh = op.name == "aioamztoken.refresh"
        if exc is None:
            outcome = "ok" if op.attempts else "adopted"
        elif isinstance(exc, asyncio.CancelledError):
            outcome = "cancelled"
        elif isinstance(exc, InvalidGrantError):
            outcome = "needs-reauth"
        elif isinstance(exc, AccountNotFoundError) and op.span is None:
            return  # an unknown account: nothing was refreshed
        else:
            outcome = "failed"
        if refresh and outcome in ("ok", "failed", "needs-reauth"):
            attributes = {"outcome": outcome, "reason": op.reason}
            self._instruments.refreshes.add(1, attributes)
            self._instruments.duration.record(time.monotonic() - op.started, attributes)
        if op.span is None and (outcome in ("ok", "adopted", "cancelled")):
            return  # read from the store, or cancelled before any work: no span
        span = self._open(op)
        span.set_attribute("aioamztoken.attempts", op.attempts)
        span.set_attribute("aioamztoken.outcome", outcome)
        if exc is not None and outcome != "cancelled":
            kind = type(exc).__name__
            span.set_attribute("error.type", kind)
            span.add_event("exception", {"exception.type": _qualified(exc)})
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, kind))
        span.end()

    # -- token requests, locks, retries -------------------------------------------------

    def post(self, session: Any, grant_type: str) -> Callable[..., Any]:
        def traced_post(url: str, **kwargs: Any) -> _TracedCall:
            op = self._current()
            parent = None
            attempt = 1
            if op is not None:
                op.attempts += 1
                attempt = op.attempts
                parent = self._trace.set_span_in_context(self._open(op))
            return _TracedCall(self, session.post(url, **kwargs), url, grant_type, attempt, parent)

        return traced_post

    @contextlib.contextmanager
    def _lock_wait(self) -> Iterator[None]:
        op = self._current()
        if op is not None:
            self._open(op)
        started = time.monotonic()
        try:
            yield
        finally:
            waited = time.monotonic() - started
            self._instruments.lock_wait.record(waited)
            if op is not None and op.span is not None and not op.done:
                op.span.set_attribute("aioamztoken.lock_wait", waited)

    def lock_wait(self) -> contextlib.AbstractContextManager[None]:
        return self._lock_wait()

    def http_retry(self, api: str) -> None:
        self._instruments.retries.add(1, {"api": api})


def _qualified(exc: BaseException) -> str:
    kind = type(exc)
    module = kind.__module__
    if module.startswith("aioamztoken."):
        module = "aioamztoken"
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


def _server(url: str) -> tuple[str, str, int | None]:
    """``url.full`` without credentials, query or fragment; host; port."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host if port is None else f"{host}:{port}"
    if ":" in host:
        netloc = f"[{host}]" if port is None else f"[{host}]:{port}"
    return f"{parts.scheme}://{netloc}{parts.path}", host, port


class _TracedCall:
    """An aiohttp request context manager inside a ``POST`` client span."""

    __slots__ = (
        "_attempt",
        "_grant",
        "_parent",
        "_request",
        "_span",
        "_status",
        "_telemetry",
        "_token",
        "_url",
    )

    def __init__(
        self,
        telemetry: _OtelTelemetry,
        request: Any,
        url: str,
        grant_type: str,
        attempt: int,
        parent: Any,
    ) -> None:
        self._telemetry = telemetry
        self._parent = parent
        self._request = request
        self._url = url
        self._grant = grant_type
        self._attempt = attempt
        self._span: Any = None
        self._token: Any = None
        self._status: int | None = None

    async def __aenter__(self) -> Any:
        telemetry = self._telemetry
        trace = telemetry._trace
        full, host, port = _server(self._url)
        attributes: dict[str, Any] = {
            "http.request.method": "POST",
            "url.full": full,
            "server.address": host,
            "aioamztoken.grant_type": self._grant,
        }
        if port is not None:
            attributes["server.port"] = port
        if self._attempt > 1:
            attributes["http.request.resend_count"] = self._attempt - 1
        self._span = telemetry._tracer.start_span(
            "POST", context=self._parent, kind=trace.SpanKind.CLIENT, attributes=attributes
        )
        self._parent = None
        # Current while the request is sent, so that an aiohttp instrumentation nests in it.
        self._token = telemetry._context.attach(trace.set_span_in_context(self._span))
        telemetry._instruments.active.add(1)
        try:
            response = await self._request.__aenter__()
        except BaseException as exc:
            self._finish(None, exc)
            raise
        self._status = response.status
        return response

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        try:
            return await self._request.__aexit__(exc_type, exc, tb)  # type: ignore[no-any-return]
        finally:
            self._finish(self._status if exc is None else None, exc)

    def _finish(self, status: int | None, exc: BaseException | None) -> None:
        telemetry = self._telemetry
        trace = telemetry._trace
        span = self._span
        telemetry._instruments.active.add(-1)
        telemetry._instruments.requests.add(
            1, {"status": "error" if status is None else str(status)}
        )
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if status is None or status >= 400:
            kind = str(status) if status is not None else type(exc).__name__
            span.set_attribute("error.type", kind)
            span.set_status(trace.Status(trace.StatusCode.ERROR, kind))
        telemetry._context.detach(self._token)
        span.end()
