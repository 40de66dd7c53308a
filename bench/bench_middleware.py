"""What AdsApiMiddleware costs per request, next to a middleware that sets one constant header.

Run: ``.venv/bin/python bench/bench_middleware.py`` (at most ~25 s; ``--quick``: ~5 s).

Every contender runs in the same process against the same minimal ``aiohttp.web``
server on loopback (in a child process, so it does not share the client's event loop
or core), in interleaved rounds whose order rotates, so drift in machine load hits all
alike. Each round sends ``--requests`` GETs per contender through ``--concurrency``
workers. Contenders:

- ``aioamztoken``: ``mgr.middleware(...)`` with a profile: origin check, cached token
  read, three headers;
- ``constant header``: the reference, a middleware that sets one constant header;
- ``constant header (control)``: the very same reference again. Its distance to the
  reference is the noise floor of the run: a difference smaller than it is not real.

Reported: the median per-request wall time (and client CPU time) of each, the ratio of
the medians, and the median of the per-round ratios (paired, the figure the verdict
uses) against the target of at most 3 % extra. A micro-benchmark of one middleware call
with no I/O (its handler returns at once) gives the intrinsic cost in ns.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from types import SimpleNamespace
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))

import aiohttp
from aiohttp import ClientHandlerType, ClientRequest, ClientResponse, web
from yarl import URL

from aioamztoken import AsyncTokenManager, MemoryTokenStore, Token
from bench._common import Row, finish

TARGET = 0.03
ACCOUNT = "bench"
PROFILE = "1234567890"
#: As long as a real LwA access token, so that both contenders send a bearer of one size.
ACCESS_TOKEN = "Atza|IwEBI" + "x" * 340
CONSTANT_BEARER = "Bearer " + ACCESS_TOKEN
OURS, REFERENCE, CONTROL = "aioamztoken", "constant header", "constant header (control)"

Middleware = Callable[[ClientRequest, ClientHandlerType], Awaitable[ClientResponse]]


# ---- the server (child process) ----------------------------------------------------


def serve(conn: Connection) -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/v2/profiles", ok)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        conn.send(runner.addresses[0][1])
        # Serve until the parent closes its end of the pipe.
        await asyncio.get_running_loop().run_in_executor(None, _wait_closed, conn)
        await runner.cleanup()

    asyncio.run(main())


def _wait_closed(conn: Connection) -> None:
    with contextlib.suppress(EOFError):
        conn.recv()


# ---- the client --------------------------------------------------------------------


async def constant_header(request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
    request.headers["Authorization"] = CONSTANT_BEARER
    return await handler(request)


async def constant_header_again(
    request: ClientRequest, handler: ClientHandlerType
) -> ClientResponse:
    request.headers["Authorization"] = CONSTANT_BEARER
    return await handler(request)


async def run_round(
    session: aiohttp.ClientSession, url: str, requests: int, workers: int
) -> tuple[float, float]:
    """Wall and client-CPU seconds per request, for ``requests`` GETs over ``workers`` tasks."""
    per_worker = requests // workers

    async def worker() -> None:
        for _ in range(per_worker):
            async with session.get(url) as response:
                await response.read()

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(workers)))
    sent = per_worker * workers
    return (time.perf_counter() - started) / sent, (time.process_time() - cpu) / sent


async def micro(middleware: Middleware, url: URL, calls: int) -> float:
    """ns per middleware call with a handler that answers at once (no I/O); best of 5."""
    request = ClientRequest("GET", url, loop=asyncio.get_running_loop())
    answer: Any = SimpleNamespace(status=200)

    async def handler(_: ClientRequest) -> ClientResponse:
        return answer  # type: ignore[no-any-return]

    best = float("inf")
    for _ in range(5):
        started = time.perf_counter_ns()
        for _ in range(calls):
            await middleware(request, handler)
        best = min(best, (time.perf_counter_ns() - started) / calls)
    return best


def paired(ours: list[float], ref: list[float]) -> float:
    """The median over rounds of ``ours / ref`` within each round."""
    return statistics.median(a / b for a, b in zip(ours, ref, strict=True))


async def bench(args: argparse.Namespace, port: int) -> tuple[list[Row], bool]:
    origin = f"http://127.0.0.1:{port}"
    url = f"{origin}/v2/profiles"
    store = MemoryTokenStore()
    await store.save(ACCOUNT, Token(ACCESS_TOKEN, "Atzr|" + "y" * 340, time.time() + 3600))
    async with AsyncTokenManager(
        "amzn1.application-oa2-client.bench",
        "bench-secret",
        store=store,
        token_url="http://127.0.0.1:9/never-used",
    ) as mgr:
        ours = mgr.middleware(ACCOUNT, profile_id=PROFILE, origins=[origin])
        await mgr.get_access_token(ACCOUNT)  # cached from here on, as in steady state

        micro_ours = await micro(ours, URL(url), 20_000)
        micro_constant = await micro(constant_header, URL(url), 20_000)

        variants: dict[str, Middleware] = {
            OURS: ours,
            REFERENCE: constant_header,
            CONTROL: constant_header_again,
        }
        sessions = {
            name: aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=args.concurrency), middlewares=[middleware]
            )
            for name, middleware in variants.items()
        }
        wall: dict[str, list[float]] = {name: [] for name in variants}
        cpu: dict[str, list[float]] = {name: [] for name in variants}
        started = time.monotonic()
        try:
            for session in sessions.values():  # warm up: connections, caches
                await run_round(session, url, args.requests // 4, args.concurrency)
            names = list(variants)
            for n in range(args.rounds):
                # Rotate the order so that no contender always runs first (or last).
                for name in names[n % 3 :] + names[: n % 3]:
                    w, c = await run_round(sessions[name], url, args.requests, args.concurrency)
                    wall[name].append(w)
                    cpu[name].append(c)
                if time.monotonic() - started > args.budget:
                    break
        finally:
            for session in sessions.values():
                await session.close()

    print(
        f"loopback, {len(wall[OURS])} interleaved rounds x {args.requests} requests per "
        f"contender, {args.concurrency} concurrent, {time.monotonic() - started:.1f} s; "
        f"Python {sys.version.split()[0]}, aiohttp {aiohttp.__version__}"
    )
    for label, figures in (("wall time", wall), ("client CPU time", cpu)):
        print(f"  {label} per request     median     best   vs reference (median per-round ratio)")
        for name in variants:
            ratio = paired(figures[name], figures[REFERENCE])
            print(
                f"    {name:<27} {statistics.median(figures[name]) * 1e6:7.1f} us "
                f"{min(figures[name]) * 1e6:6.1f} us   {(ratio - 1) * 100:+6.2f} %"
            )
    median_ours, median_ref = statistics.median(wall[OURS]), statistics.median(wall[REFERENCE])
    extra_call = micro_ours - micro_constant
    print(
        f"  one middleware call alone (no I/O): {micro_ours:.0f} ns, constant header "
        f"{micro_constant:.0f} ns: {extra_call:.0f} ns extra = "
        f"{extra_call / (median_ref * 1e9) * 100:.2f} % of a request"
    )
    extra = paired(wall[OURS], wall[REFERENCE]) - 1
    noise = abs(paired(wall[CONTROL], wall[REFERENCE]) - 1)
    within = extra <= TARGET
    if within:
        verdict = "within target"
    elif extra - noise <= TARGET:
        verdict = "inconclusive: above target by less than the noise floor; rerun when quiet"
    else:
        verdict = "OVER target"
    print(
        f"target: at most {TARGET * 100:.0f} % extra wall time per request: "
        f"{extra * 100:+.2f} % (noise floor {noise * 100:.2f} %) -> {verdict}"
    )
    rows = [
        Row(
            "wall time per request, median",
            f"{median_ours * 1e6:.1f} us",
            f"{median_ref * 1e6:.1f} us (constant header)",
            f"{median_ours / median_ref:.3f}",
        ),
        Row(
            "wall time per request, paired per round",
            f"{extra * 100:+.2f} %",
            f"noise floor {noise * 100:.2f} %",
            f"{1 + extra:.3f}",
        ),
        Row(
            "one middleware call, no I/O",
            f"{micro_ours:.0f} ns",
            f"{micro_constant:.0f} ns",
            f"{micro_ours / micro_constant:.2f}",
        ),
    ]
    return rows, within


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=40, help="at most; see --budget")
    parser.add_argument("--requests", type=int, default=3000, help="per round and contender")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--budget", type=float, default=20.0, help="seconds for the rounds")
    parser.add_argument("--check", action="store_true", help="exit 1 when over the target")
    parser.add_argument("--json", help="also write the summary rows to this file")
    parser.add_argument("--quick", action="store_true", help="smaller, faster run")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.requests, args.budget = 8, 1000, 4.0
    started = time.monotonic()
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    server = context.Process(target=serve, args=(child,), daemon=True)
    server.start()
    try:
        port = parent.recv()
        rows, within = asyncio.run(bench(args, port))
    finally:
        parent.close()
        server.join(5)
        if server.is_alive():
            server.terminate()
    finish("middleware summary", rows, args, started)
    return 1 if args.check and not within else 0


if __name__ == "__main__":
    sys.exit(main())
