"""A fleet sharing Redis: 6 processes, 20 expired accounts, 200 callers each.

Run: ``.venv/bin/python bench/bench_fleet.py`` (about 10 s; needs ``redis-server``).

The scenario of ``tests/test_redis.py``: a real ``redis-server`` on a free loopback port,
the emulator in this process (each token request held 50 ms, so that processes
overlap), 20 accounts whose tokens have all expired stored in a
:class:`~aioamztoken.RedisTokenStore`, and 6 real processes (``tests/_scripts/
fleet_child.py``) started together, each with 200 callers asking for every account at
once. The fleet-wide lock makes the fleet refresh each account once: 20 requests.

The same fleet then runs on a SQLiteTokenStore (one host) and, where PostgreSQL's server
binaries are installed, a PostgresTokenStore (a server started for the run): 20 each.
``tests/test_store_engines.py`` runs it on every engine, Cluster and Sentinel included.

Baseline: the same 6 processes with Authlib (one ``AsyncOAuth2Client`` per account in
each process, as a process-local client must be): each process refreshes every account
itself. Skipped with a message when Authlib is not installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))

import aioamztoken as at
from aioamztoken.testing import AmazonEmulator
from bench._common import AUTHLIB_MISSING, ROOT, Row, authlib_client_class, finish, parse_args

CHILD = ROOT / "tests" / "_scripts" / "fleet_child.py"
PROCESSES, ACCOUNTS, CALLERS = 6, 20, 200
LATENCY = 0.05
STARTUP_TIMEOUT = 60.0


@dataclass(frozen=True)
class Fleet:
    token_requests: int
    errors: list[str]
    seconds: float


async def spawn_fleet(
    role: str, configs: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], float]:
    """Start one child per config, release them together, and return their reports."""
    async with contextlib.AsyncExitStack() as stack:
        procs = []
        for config in configs:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(CHILD),
                role,
                json.dumps(config),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            stack.push_async_callback(proc.wait)
            stack.callback(lambda p=proc: p.returncode is None and p.kill())
            procs.append(proc)
        for proc in procs:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), STARTUP_TIMEOUT)
            assert line.strip() == b"ready", line
        started = time.perf_counter()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
        reports = []
        for proc in procs:
            assert proc.stdout is not None
            reports.append(json.loads(await proc.stdout.readline()))
        return reports, time.perf_counter() - started


async def run_fleet(
    emu: AmazonEmulator,
    redis_url: str,
    *,
    processes: int = PROCESSES,
    accounts: int = ACCOUNTS,
    callers: int = CALLERS,
) -> Fleet:
    ids = [f"acct-{n:02d}" for n in range(accounts)]
    async with at.RedisTokenStore(redis_url, namespace="bench-fleet") as store:
        for account_id in ids:
            expired = at.Token(
                emu.issue_access_token(account_id, lifetime=1),
                emu.issue_refresh_token(account_id),
                time.time() - 60,
            )
            await store.save(account_id, expired)
    config = {
        "redis_url": redis_url,
        "namespace": "bench-fleet",
        "token_url": emu.token_url,
        "client_id": emu.client_id,
        "client_secret": emu.client_secret,
        "accounts": ids,
        "callers": callers,
    }
    emu.reset_counters()
    reports, seconds = await spawn_fleet("fleet", [config] * processes)
    return Fleet(emu.token_requests, [e for r in reports for e in r["errors"]], seconds)


async def run_url_fleet(
    emu: AmazonEmulator,
    store_url: str,
    *,
    processes: int = PROCESSES,
    accounts: int = ACCOUNTS,
    callers: int = CALLERS,
) -> Fleet:
    """The same fleet on any store :func:`aioamztoken.open_store` opens (SQLite, PostgreSQL)."""
    ids = [f"url-{n:02d}" for n in range(accounts)]
    store: Any = at.open_store(store_url)
    async with store:
        for account_id in ids:
            expired = at.Token(
                emu.issue_access_token(account_id, lifetime=1),
                emu.issue_refresh_token(account_id),
                time.time() - 60,
            )
            await store.save(account_id, expired)
    config = {
        "store_url": store_url,
        "token_url": emu.token_url,
        "client_id": emu.client_id,
        "client_secret": emu.client_secret,
        "accounts": ids,
        "callers": callers,
    }
    emu.reset_counters()
    reports, seconds = await spawn_fleet("fleet", [config] * processes)
    return Fleet(emu.token_requests, [e for r in reports for e in r["errors"]], seconds)


async def run_databases() -> list[Row]:
    """The fleet on SQLite (one host) and, where its binaries are, PostgreSQL."""
    import tempfile

    from tests.db_servers import PG_BIN, PostgresServer

    name = f"fleet: {PROCESSES} processes x {CALLERS} callers, {ACCOUNTS} expired accounts"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        urls = {"SQLite": f"sqlite://{tmp}/tokens.db"}
        server = PostgresServer().start() if PG_BIN is not None else None
        if server is not None:
            urls["PostgreSQL"] = server.dsn
        try:
            async with AmazonEmulator() as emu:
                emu.latency = LATENCY
                for engine, url in urls.items():
                    fleet = await run_url_fleet(emu, url)
                    print(
                        f"  {engine + ' store':36} {fleet.token_requests:4d} token requests, "
                        f"{len(fleet.errors)} caller errors, {fleet.seconds:.2f} s"
                    )
                    rows.append(
                        Row(
                            f"{name}: token requests, {engine}",
                            str(fleet.token_requests),
                            f"{ACCOUNTS} (one per account)",
                            f"{fleet.token_requests / ACCOUNTS:.2f}x",
                        )
                    )
        finally:
            if server is not None:
                server.stop()
    return rows


async def run_authlib_fleet(
    emu: AmazonEmulator,
    *,
    processes: int = PROCESSES,
    accounts: int = ACCOUNTS,
    callers: int = CALLERS,
) -> Fleet:
    ids = [f"authlib-{n:02d}" for n in range(accounts)]
    config = {
        "token_url": emu.token_url,
        "client_id": emu.client_id,
        "client_secret": emu.client_secret,
        "accounts": ids,
        "callers": callers,
        "refresh_tokens": [emu.issue_refresh_token(a) for a in ids],
    }
    emu.reset_counters()
    reports, seconds = await spawn_fleet("authlib", [config] * processes)
    return Fleet(emu.token_requests, [e for r in reports for e in r["errors"]], seconds)


async def run() -> list[Row]:
    from bench._common import repo_on_path

    repo_on_path()
    from tests.redis_server import REDIS_SERVER, SKIP_REASON, RedisServer

    name = f"fleet: {PROCESSES} processes x {CALLERS} callers, {ACCOUNTS} expired accounts"
    if REDIS_SERVER is None:
        print(f"  {SKIP_REASON}: skipped")
        return [Row(f"{name}: token requests", "redis-server missing", "-", "-")]
    server = RedisServer().start()
    try:
        async with AmazonEmulator() as emu:
            emu.latency = LATENCY
            ours = await run_fleet(emu, server.url)
            peer = None
            if authlib_client_class() is not None:
                peer = await run_authlib_fleet(emu)
    finally:
        server.stop()
    print(f"{name} (emulator latency {LATENCY * 1000:.0f} ms):")
    print(
        f"  RedisTokenStore + AsyncTokenManager  {ours.token_requests:4d} token requests, "
        f"{len(ours.errors)} caller errors, {ours.seconds:.2f} s"
    )
    if peer is None:
        print(f"  {AUTHLIB_MISSING}")
        return [Row(f"{name}: token requests", str(ours.token_requests), "Authlib missing", "-")]
    print(
        f"  Authlib, one client per account      {peer.token_requests:4d} token requests, "
        f"{len(peer.errors)} caller errors, {peer.seconds:.2f} s"
    )
    return [
        Row(
            f"{name}: token requests",
            str(ours.token_requests),
            f"{peer.token_requests} (Authlib, per process)",
            f"{ours.token_requests / peer.token_requests:.2f}x",
        )
    ]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    started = time.monotonic()
    rows = asyncio.run(run())
    rows += asyncio.run(run_databases())
    finish("fleet summary", rows, args, started)


if __name__ == "__main__":
    main()
