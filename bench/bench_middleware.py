"""What AdsApiMiddleware costs per request, next to a middleware that sets one constant header.

Run: ``.venv/bin/python bench/bench_middleware.py`` (~60 s; ``--quick``: ~15 s).

All contenders run in one process against one minimal ``aiohttp.web`` server on
loopback, in interleaved rounds whose order rotates, so drift in machine load hits all
alike. Each round sends ``--requests`` GETs per contender through ``--concurrency``
workers. By default the server runs on the client's event loop (``--server loop``):
the steadiest figures on a busy machine, the server's share being part of every
request; ``--server process`` moves it to a child process (client time alone, noisier
when the machine is shared). Contenders:

- ``aioamztoken``: ``mgr.middleware(account, profile_id=...)``: origin check, cached
  token read, three headers;
- ``constant header``: the reference, a middleware that sets one constant
  ``Authorization`` header (a bearer as long as a real LwA token);
- ``constant header (control)``: the very same reference again. Its distance to the
  reference is the noise floor of the run: a smaller difference is not real;
- ``3 constant Amazon headers``: our three headers as constants, to tell what the two
  extra headers Amazon requires cost on the wire from what the middleware's logic costs.

Reported: the median (and best) per-request wall and client CPU time of each, and the
median of the per-round ratios to the reference (paired: the figure the verdict uses)
against the target of at most 3 % extra. A micro-benchmark of one middleware call with
no I/O (its handler returns at once) gives the intrinsic cost in ns. Bounded: rounds
stop once ``--budget`` seconds (default 20) have passed.

Then the httpx and requests adapters, each against the same client with an auth that
sets one constant header (and that reference again, the control), against a server in
a child process: ``mgr.httpx_auth`` on ``httpx.AsyncClient``,
``BlockingTokenManager.httpx_auth`` on ``httpx.Client`` and
``BlockingTokenManager.requests_auth`` on a ``requests.Session``; target at most 5 %
extra wall time per request, as the median per-round ratio, ``--client-budget`` seconds
(default 12) each. Skipped when httpx or requests is not installed.
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
CLIENT_TARGET = 0.05
ACCOUNT = "bench"
PROFILE = "1234567890"
#: As long as a real LwA access token, so that both contenders send a bearer of one size.
ACCESS_TOKEN = "Atza|IwEBI" + "x" * 340
CONSTANT_BEARER = "Bearer " + ACCESS_TOKEN
CLIENT_ID = "amzn1.application-oa2-client.0123456789abcdef0123456789abcdef"
OURS, REFERENCE, CONTROL = "aioamztoken", "constant header", "constant header (control)"
WIRE = "3 constant Amazon headers"

Middleware = Callable[[ClientRequest, ClientHandlerType], Awaitable[ClientResponse]]


# ---- the server (child process) ----------------------------------------------------


async def start_server() -> web.AppRunner:
    """The minimal server: ``GET /v2/profiles`` answers ``ok``; on a free loopback port."""

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/v2/profiles", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


def serve(conn: Connection) -> None:
    """The server in a child process: sends its port, serves until the pipe closes."""

    async def main() -> None:
        runner = await start_server()
        conn.send(runner.addresses[0][1])
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


async def constant_amazon_headers(
    request: ClientRequest, handler: ClientHandlerType
) -> ClientResponse:
    """The same three headers as ours, as constants: what the headers cost on the wire."""
    headers = request.headers
    headers["Authorization"] = CONSTANT_BEARER
    headers["Amazon-Advertising-API-ClientId"] = CLIENT_ID
    headers["Amazon-Advertising-API-Scope"] = PROFILE
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


async def bench_with_server(args: argparse.Namespace) -> tuple[list[Row], bool]:
    """Run :func:`bench` against a server on this event loop (``--server loop``)."""
    runner = await start_server()
    try:
        return await bench(args, runner.addresses[0][1])
    finally:
        await runner.cleanup()


async def bench(args: argparse.Namespace, port: int) -> tuple[list[Row], bool]:
    origin = f"http://127.0.0.1:{port}"
    url = f"{origin}/v2/profiles"
    store = MemoryTokenStore()
    await store.save(ACCOUNT, Token(ACCESS_TOKEN, "Atzr|" + "y" * 340, time.time() + 3600))
    async with AsyncTokenManager(
        CLIENT_ID,
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
            WIRE: constant_amazon_headers,
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
                for name in names[n % len(names) :] + names[: n % len(names)]:
                    w, c = await run_round(sessions[name], url, args.requests, args.concurrency)
                    wall[name].append(w)
                    cpu[name].append(c)
                if time.monotonic() - started > args.budget:
                    break
        finally:
            for session in sessions.values():
                await session.close()

    where = "in a child process" if args.server == "process" else "on the same event loop"
    print(
        f"loopback, server {where}; {len(wall[OURS])} interleaved rounds x {args.requests} "
        f"requests per contender, {args.concurrency} concurrent, "
        f"{time.monotonic() - started:.1f} s; "
        f"Python {sys.version.split()[0]}, aiohttp {aiohttp.__version__}"
    )
    for label, figures in (("wall time", wall), ("client CPU time", cpu)):
        print(f"  {label} per request     median     best   vs reference (median per-round ratio)")
        for name in variants:
            ratio = paired(figures[name], figures[REFERENCE])
            print(
                f"    {name:<26} {statistics.median(figures[name]) * 1e6:7.1f} us "
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


# ---- httpx and requests ------------------------------------------------------------


def _client_contenders(kind: str, ours: Any) -> dict[str, tuple[Any, Callable[[str], Any]]]:
    """name -> (client, one GET): ours, the constant-header reference and its control."""
    import httpx
    import requests

    class ConstantHttpx(httpx.Auth):
        def auth_flow(self, request: httpx.Request) -> Any:
            request.headers["Authorization"] = CONSTANT_BEARER
            yield request

    class ConstantRequests(requests.auth.AuthBase):
        def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
            r.headers["Authorization"] = CONSTANT_BEARER
            return r

    made: dict[str, tuple[Any, Callable[[str], Any]]] = {}
    for name, auth in ((OURS, ours), (REFERENCE, None), (CONTROL, None)):
        if kind == "httpx.AsyncClient":
            aclient = httpx.AsyncClient(auth=auth or ConstantHttpx())
            made[name] = (aclient, aclient.get)
        elif kind == "httpx.Client":
            client = httpx.Client(auth=auth or ConstantHttpx())
            made[name] = (client, client.get)
        else:
            session = requests.Session()
            session.auth = auth or ConstantRequests()
            made[name] = (session, session.get)
    return made


async def _client_rounds(
    kind: str, contenders: dict[str, tuple[Any, Callable[[str], Any]]], url: str, args: Any
) -> dict[str, list[float]]:
    wall: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    started = time.monotonic()

    async def one_round(get: Callable[[str], Any], count: int) -> float:
        t0 = time.perf_counter()
        if kind == "httpx.AsyncClient":
            per = max(1, count // args.concurrency)

            async def worker() -> None:
                for _ in range(per):
                    (await get(url)).read()

            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
            count = per * args.concurrency
        else:
            for _ in range(count):
                get(url).content  # noqa: B018
        return (time.perf_counter() - t0) / count

    for _, get in contenders.values():  # warm up
        await one_round(get, max(10, args.client_requests // 4))
    for n in range(args.rounds):
        for name in names[n % len(names) :] + names[: n % len(names)]:
            wall[name].append(await one_round(contenders[name][1], args.client_requests))
        if time.monotonic() - started > args.client_budget:
            break
    return wall


def _client_micro(kind: str, auth: Any, calls: int = 3000) -> float:
    """Seconds per auth call with no I/O (request built, signed, answered 200); best of 5."""
    import httpx
    import requests

    url = "http://127.0.0.1:1/v2/profiles"
    ok = httpx.Response(200)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(calls):
            if kind == "requests.Session":
                requests.Request("GET", url, auth=auth).prepare()
                continue
            request = httpx.Request("GET", url)
            flow = auth.sync_auth_flow(request)
            sent = next(flow)
            for _ in sent.stream:
                pass
            ok.request = sent
            with contextlib.suppress(StopIteration):
                flow.send(ok)
        best = min(best, (time.perf_counter() - started) / calls)
    return best


def bench_clients(args: argparse.Namespace) -> tuple[list[Row], bool]:
    """The httpx and requests adapters against the same client with a constant header."""
    try:
        import httpx
        import requests
    except ImportError:
        print("httpx or requests not installed: the client adapters are skipped")
        return [], True
    from aioamztoken import BlockingTokenManager

    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    server = context.Process(target=serve, args=(child,), daemon=True)
    server.start()
    rows: list[Row] = []
    all_within = True
    try:
        origin = f"http://127.0.0.1:{parent.recv()}"
        url = f"{origin}/v2/profiles"
        store = MemoryTokenStore()
        asyncio.run(
            store.save(ACCOUNT, Token(ACCESS_TOKEN, "Atzr|" + "y" * 340, time.time() + 3600))
        )
        with BlockingTokenManager(
            CLIENT_ID, "bench-secret", store=store, token_url="http://127.0.0.1:9/never-used"
        ) as blocking:
            blocking.get_access_token(ACCOUNT)
            for kind in ("httpx.AsyncClient", "httpx.Client", "requests.Session"):
                rows_kind, within = _bench_client(kind, blocking, origin, url, args)
                rows += rows_kind
                all_within &= within
    finally:
        parent.close()
        server.join(5)
        if server.is_alive():
            server.terminate()
    print(f"  (httpx {httpx.__version__}, requests {requests.__version__})")
    return rows, all_within


def _bench_client(
    kind: str, blocking: Any, origin: str, url: str, args: argparse.Namespace
) -> tuple[list[Row], bool]:
    async def run() -> dict[str, list[float]]:
        if kind == "httpx.AsyncClient":
            async with AsyncTokenManager(
                CLIENT_ID,
                "bench-secret",
                store=blocking.manager.store,
                token_url="http://127.0.0.1:9/never-used",
            ) as mgr:
                await mgr.get_access_token(ACCOUNT)
                ours = mgr.httpx_auth(ACCOUNT, profile_id=PROFILE, origins=[origin])
                contenders = _client_contenders(kind, ours)
                try:
                    return await _client_rounds(kind, contenders, url, args)
                finally:
                    for client, _ in contenders.values():
                        await client.aclose()
        if kind == "httpx.Client":
            ours = blocking.httpx_auth(ACCOUNT, profile_id=PROFILE, origins=[origin])
        else:
            ours = blocking.requests_auth(ACCOUNT, profile_id=PROFILE, origins=[origin])
        contenders = _client_contenders(kind, ours)
        try:
            return await _client_rounds(kind, contenders, url, args)
        finally:
            for client, _ in contenders.values():
                client.close()

    wall = asyncio.run(run())
    micro_line = ""
    micro_rows: list[Row] = []
    if kind != "httpx.AsyncClient":  # the same flow code as the sync one
        import httpx
        import requests

        class ConstantHttpx(httpx.Auth):
            def auth_flow(self, request: httpx.Request) -> Any:
                request.headers["Authorization"] = CONSTANT_BEARER
                yield request

        class ConstantRequests(requests.auth.AuthBase):
            def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
                r.headers["Authorization"] = CONSTANT_BEARER
                return r

        if kind == "httpx.Client":
            ours_auth: Any = blocking.httpx_auth(ACCOUNT, profile_id=PROFILE, origins=[origin])
            constant: Any = ConstantHttpx()
        else:
            ours_auth = blocking.requests_auth(ACCOUNT, profile_id=PROFILE, origins=[origin])
            constant = ConstantRequests()
        ours_call, constant_call = _client_micro(kind, ours_auth), _client_micro(kind, constant)
        share = (ours_call - constant_call) / statistics.median(wall[REFERENCE]) * 100
        micro_line = (
            f"; one auth call alone (no I/O): {ours_call * 1e6:.1f} us, constant header "
            f"{constant_call * 1e6:.1f} us: {share:+.2f} % of a request"
        )
        micro_rows.append(
            Row(
                f"{kind} adapter, one auth call (no I/O)",
                f"{ours_call * 1e6:.1f} us",
                f"{constant_call * 1e6:.1f} us",
                f"{ours_call / constant_call:.2f} ({share:+.2f} % of a request)",
            )
        )
    extra = paired(wall[OURS], wall[REFERENCE]) - 1
    noise = abs(paired(wall[CONTROL], wall[REFERENCE]) - 1)
    within = extra <= CLIENT_TARGET
    verdict = (
        "within target"
        if within
        else (
            "inconclusive: above target by less than the noise floor"
            if extra - noise <= CLIENT_TARGET
            else "OVER target"
        )
    )
    median_ours, median_ref = statistics.median(wall[OURS]), statistics.median(wall[REFERENCE])
    print(
        f"{kind}: {len(wall[OURS])} interleaved rounds x {args.client_requests} requests; "
        f"ours {median_ours * 1e6:.1f} us, constant header {median_ref * 1e6:.1f} us per "
        f"request; paired {extra * 100:+.2f} % (noise floor {noise * 100:.2f} %), target at "
        f"most {CLIENT_TARGET * 100:.0f} % -> {verdict}{micro_line}"
    )
    return [
        Row(
            f"{kind} adapter, wall time per request (paired)",
            f"{median_ours * 1e6:.1f} us",
            f"{median_ref * 1e6:.1f} us (constant header)",
            f"{1 + extra:.3f}",
        ),
        *micro_rows,
    ], within


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=60, help="at most; see --budget")
    parser.add_argument("--requests", type=int, default=2000, help="per round and contender")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--budget", type=float, default=20.0, help="seconds for the rounds")
    parser.add_argument(
        "--server",
        choices=("loop", "process"),
        default="loop",
        help="run the server on the client's event loop (steadier on a busy machine; its "
        "time is part of every request) or in a child process (client time alone, noisier)",
    )
    parser.add_argument(
        "--client-requests", type=int, default=100, help="per round and contender (httpx...)"
    )
    parser.add_argument(
        "--client-budget", type=float, default=12.0, help="seconds of rounds per client kind"
    )
    parser.add_argument("--no-clients", action="store_true", help="aiohttp only")
    parser.add_argument("--check", action="store_true", help="exit 1 when over the target")
    parser.add_argument("--json", help="also write the summary rows to this file")
    parser.add_argument("--quick", action="store_true", help="smaller, faster run")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.requests, args.budget = 30, 1000, 5.0
        args.client_requests, args.client_budget = 100, 2.0
    started = time.monotonic()
    if args.server == "loop":
        rows, within = asyncio.run(bench_with_server(args))
    else:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        server = context.Process(target=serve, args=(child,), daemon=True)
        server.start()
        try:
            rows, within = asyncio.run(bench(args, parent.recv()))
        finally:
            parent.close()
            server.join(5)
            if server.is_alive():
                server.terminate()
    if not args.no_clients:
        client_rows, clients_within = bench_clients(args)
        rows += client_rows
        within = within and clients_within
    finish("middleware summary", rows, args, started)
    return 1 if args.check and not within else 0


if __name__ == "__main__":
    sys.exit(main())
