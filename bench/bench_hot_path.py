"""The hot path: ``get_access_token`` on a fresh cached token, against a bare async dict lookup.

Run: ``.venv/bin/python bench/bench_hot_path.py`` (about 10 s; ``--quick``: about 2 s).

Three contenders, timed in the same process in interleaved rounds (order alternating),
each round ``CALLS`` awaited calls in a loop; the figures are the median over rounds and
the median of the per-round ratios (best-of-rounds is printed too):

- ``bare``: ``async def bare(key): return cache[key]``, the least an async getter can cost;
- ``aioamztoken``: ``AsyncTokenManager.get_access_token`` with a fresh cached token;
- ``aioamztoken+otel``: the same call on a manager given OpenTelemetry SDK providers (a
  metric reader and a span processor attached), skipped if ``opentelemetry-sdk`` is not
  installed: the hot path makes no instrument call, so the two must time alike;
- ``authlib``: Authlib's ``AsyncOAuth2Client.ensure_active_token`` with a valid token
  (what its ``request()`` runs before every call), skipped with a message if Authlib is
  not installed (``.venv/bin/pip install authlib httpx``; not a project dependency).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

if __package__ in (None, ""):
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))

import aioamztoken as at
from bench._common import (
    AUTHLIB_MISSING,
    Row,
    Timing,
    authlib_client_class,
    finish,
    interleaved,
    parse_args,
)

CALLS = 100_000
ROUNDS = 31


@dataclass(frozen=True)
class HotPath:
    timing: Timing
    has_authlib: bool
    has_otel: bool = False

    @property
    def otel_ratio(self) -> float:
        """Median per-round ratio of the manager with OpenTelemetry providers to without."""
        return self.timing.median_ratio("aioamztoken+otel", "aioamztoken")

    @property
    def ratio(self) -> float:
        """Median per-round ratio of the manager to the bare async dict lookup."""
        return self.timing.median_ratio("aioamztoken", "bare")

    @property
    def best_ratio(self) -> float:
        """Best-of-rounds ratio: noise only ever adds time, so this is the least noisy."""
        return self.timing.best("aioamztoken") / self.timing.best("bare")


@asynccontextmanager
async def authlib_getter() -> AsyncIterator[Callable[[str], Awaitable[object]] | None]:
    client_class = authlib_client_class()
    if client_class is None:
        yield None
        return
    client = client_class(
        "client-id",
        "client-secret",
        token_endpoint="http://127.0.0.1:9/never-called",
        token={
            "access_token": "Atza|cached",
            "refresh_token": "Atzr|cached",
            "token_type": "bearer",
            "expires_at": int(time.time()) + 3600,
        },
    )

    async def ensure_active(_: str) -> object:
        await client.ensure_active_token(client.token)
        return client.token["access_token"]

    try:
        yield ensure_active
    finally:
        await client.aclose()


@asynccontextmanager
async def otel_manager(store: at.MemoryTokenStore) -> AsyncIterator[at.AsyncTokenManager | None]:
    """A manager wired to OpenTelemetry SDK providers, or ``None`` without the SDK."""
    try:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    except ImportError:
        yield None
        return
    meters = MeterProvider(metric_readers=[InMemoryMetricReader()])
    tracers = TracerProvider()
    tracers.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    try:
        async with at.AsyncTokenManager(
            "client-id",
            "client-secret",
            store=store,
            token_url="http://127.0.0.1:9/never",
            meter_provider=meters,
            tracer_provider=tracers,
        ) as mgr:
            yield mgr
    finally:
        meters.shutdown()
        tracers.shutdown()


async def measure(*, calls: int = CALLS, rounds: int = ROUNDS) -> HotPath:
    """Time the three contenders (two without Authlib) in one run."""
    store = at.MemoryTokenStore()
    await store.save("acct", at.Token("Atza|cached", "Atzr|cached", time.time() + 3600))
    cache = {"acct": "Atza|cached"}

    async def bare(key: str) -> str:
        return cache[key]

    async with (
        at.AsyncTokenManager(
            "client-id", "client-secret", store=store, token_url="http://127.0.0.1:9/never"
        ) as mgr,
        authlib_getter() as authlib,
        otel_manager(store) as traced,
    ):
        await mgr.get_access_token("acct")  # loaded once; every call after is the hot path
        contenders: dict[str, Callable[[str], Awaitable[object]]] = {
            "bare": bare,
            "aioamztoken": mgr.get_access_token,
        }
        if traced is not None:
            await traced.get_access_token("acct")
            contenders["aioamztoken+otel"] = traced.get_access_token
        if authlib is not None:
            contenders["authlib"] = authlib
        # Authlib's call is ~50x slower: a twentieth of the calls gives as good a figure.
        timing = await interleaved(
            contenders, "acct", rounds=rounds, calls=calls, slow={"authlib": 20}
        )
    return HotPath(timing, authlib is not None, traced is not None)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    started = time.monotonic()
    calls, rounds = (20_000, 7) if args.quick else (CALLS, ROUNDS)
    result = asyncio.run(measure(calls=calls, rounds=rounds))
    t = result.timing
    print(f"hot path: {rounds} interleaved rounds x {calls:,} awaited calls, ns per call")
    print(f"  {'':32} {'median':>8} {'best':>8}")
    print(f"  {'bare async dict lookup':32} {t.median('bare'):8.1f} {t.best('bare'):8.1f}")
    print(
        f"  {'AsyncTokenManager (cached)':32} {t.median('aioamztoken'):8.1f} "
        f"{t.best('aioamztoken'):8.1f}"
    )
    rows = [
        Row(
            "hot path vs bare async dict lookup",
            f"{t.median('aioamztoken'):.0f} ns",
            f"{t.median('bare'):.0f} ns",
            f"{result.ratio:.2f}x (best {result.best_ratio:.2f}x)",
        )
    ]
    if result.has_otel:
        print(
            f"  {'... with OpenTelemetry SDK':32} {t.median('aioamztoken+otel'):8.1f} "
            f"{t.best('aioamztoken+otel'):8.1f}"
        )
        rows.append(
            Row(
                "hot path with OpenTelemetry vs without",
                f"{t.median('aioamztoken+otel'):.0f} ns",
                f"{t.median('aioamztoken'):.0f} ns",
                f"{result.otel_ratio:.2f}x",
            )
        )
    else:
        print("  opentelemetry-sdk not installed: the OpenTelemetry line is skipped")
    if result.has_authlib:
        print(
            f"  {'Authlib ensure_active_token':32} {t.median('authlib'):8.1f} "
            f"{t.best('authlib'):8.1f}"
        )
        rows.append(
            Row(
                "hot path vs Authlib ensure_active_token",
                f"{t.median('aioamztoken'):.0f} ns",
                f"{t.median('authlib'):.0f} ns",
                f"{t.median_ratio('aioamztoken', 'authlib'):.3f}x "
                f"({t.median_ratio('authlib', 'aioamztoken'):.0f}x faster)",
            )
        )
    else:
        print(f"  {AUTHLIB_MISSING}")
        rows.append(Row("hot path vs Authlib ensure_active_token", "-", "not installed", "-"))
    finish("hot path summary", rows, args, started)


if __name__ == "__main__":
    main()
