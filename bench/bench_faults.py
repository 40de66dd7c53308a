"""Issue 11's faults, each measured beside the bound the library promises under it.

Run: ``.venv/bin/python bench/bench_faults.py`` (about 1 to 2 minutes; ``--quick``: under
1). Every scenario runs in a child process of its own (so a hung store or an exhausted
descriptor table cannot spoil the next), stopped after ``SECTION_TIMEOUT`` seconds, and
every wait inside it is bounded too, so a fault that is not fixed shows as a figure
beyond its bound (or "stopped at N s"), never as a hang. The summary's "baseline"
column is the bound; the ratio is measured / bound (at most 1.00x: within the bound).

- **descriptors**: 2,000 (and 10,000) cold accounts asked for at once, in a child whose
  soft ``RLIMIT_NOFILE`` is 1,024, on the directory, file and encrypted-file stores
  (on tmpfs where there is one): the peak of open descriptors above the baseline,
  sampled every 5 ms, and how many callers failed (``retry_budget=5``, so that failed
  refreshes give up quickly). Bound: 100 above the baseline, 0 failures.
- **failing endpoint**: the store refuses every save, the endpoint then answers
  ``invalid_client``; one caller asks for the account every millisecond for 6 s (3 s
  with ``--quick``). Token requests for the account. Bound: a handful (5).
- **tiny expires_in**: the endpoint grants tokens with ``expires_in`` 0.01 s; background
  refreshes per second over 3 s. Bound: about 1 per second.
- **uncured 401s**: the Ads API rejects every token; 100 requests are sent one after
  another through ``mgr.middleware``. Token refreshes (bound 2) and API sends (bound 110).
- **hung store**: ``load()`` never returns (a hung mount: it ignores cancellation too);
  10 callers with ``retry_budget=2``. The slowest caller (bound: retry_budget + 1 s) and
  ``aclose()`` (bound: request_timeout + 1 s, request_timeout=2), each stopped after 15 s.
- **frozen Redis**: redis-server under SIGSTOP, 300 expired accounts asked for at once,
  ``max_connections=50``, ``timeout=1``. The slowest caller (bound: about 3 x timeout).
  Needs ``redis-server`` on the PATH; skipped otherwise.
- **file lock held elsewhere**: another process holds a FileTokenStore's lock for 12 s;
  ``wait_for(save, 2)``. Seconds until it returns (bound: 2 + 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import ROOT, Row, finish, parse_args, repo_on_path

#: Seconds a scenario's child process may run before it is stopped.
SECTION_TIMEOUT = 90
FD_LIMIT = 1024
FD_BOUND = 100


def tmp_root() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def bounded(awaitable: Awaitable[Any], limit: float) -> tuple[Any, float, bool]:
    """(result or exception, seconds, finished?) of ``awaitable``, given up after ``limit``."""
    started = time.monotonic()
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait([task], timeout=limit)
    seconds = time.monotonic() - started
    if not done:
        return None, seconds, False
    exc = task.exception()
    return (exc if exc is not None else task.result()), seconds, True


def manager(emu: Any, store: Any, **options: Any) -> Any:
    import aioamztoken as at

    return at.AsyncTokenManager(
        emu.client_id, emu.client_secret, store=store, token_url=emu.token_url, **options
    )


# ------------------------------------------------------------------------------ the scenarios


async def descriptors(kind: str, accounts: int) -> dict[str, Any]:
    import resource

    import aioamztoken as at
    from aioamztoken.testing import AmazonEmulator

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, hard))
    with tempfile.TemporaryDirectory(dir=tmp_root()) as tmp:
        path = Path(tmp)
        async with AmazonEmulator() as emu:
            if kind == "directory":
                store: Any = at.DirectoryTokenStore(path / "tokens")
            elif kind == "file":
                store = at.FileTokenStore(path / "tokens.json")
            else:
                store = at.EncryptedFileTokenStore(
                    path / "tokens.bin", key=at.EncryptedFileTokenStore.generate_key()
                )
            ids = [f"acct-{n}" for n in range(accounts)]
            for start in range(0, accounts, 500):  # bounded batches: the fill is not measured
                chunk = ids[start : start + 500]
                await asyncio.gather(
                    *(store.save(a, at.Token("", emu.issue_refresh_token(a), 0.0)) for a in chunk)
                )
            # A short retry budget: a failing refresh gives up in seconds, not 30 s.
            async with manager(emu, store, retry_budget=5.0) as mgr:
                baseline = open_fds()
                peak = baseline
                stop = asyncio.Event()

                async def sample() -> None:
                    nonlocal peak
                    while not stop.is_set():
                        with contextlib.suppress(OSError):  # the table may be full
                            peak = max(peak, open_fds())
                        await asyncio.sleep(0.005)

                sampler = asyncio.ensure_future(sample())
                started = time.monotonic()
                results = await asyncio.wait_for(
                    asyncio.gather(*(mgr.get_access_token(a) for a in ids), return_exceptions=True),
                    SECTION_TIMEOUT - 20,
                )
                seconds = time.monotonic() - started
                stop.set()
                await sampler
    failures = [r for r in results if isinstance(r, BaseException)]
    reasons = sorted({type(r).__name__ for r in failures})
    return {"above": peak - baseline, "failed": len(failures), "reasons": reasons, "s": seconds}


class RefusingStore:
    """A user-written store that reads fine but refuses every save (a full disk)."""

    def __init__(self) -> None:
        self.tokens: dict[str, Any] = {}

    async def load(self, account_id: str) -> Any:
        return self.tokens.get(account_id)

    async def save(self, account_id: str, token: Any) -> None:
        raise OSError(28, "No space left on device")

    async def delete(self, account_id: str) -> None:
        self.tokens.pop(account_id, None)

    async def accounts(self) -> list[str]:
        return sorted(self.tokens)


async def failing_endpoint(seconds: float) -> dict[str, Any]:
    import aioamztoken as at
    from aioamztoken.testing import AmazonEmulator

    async with AmazonEmulator(token_lifetime=4.0) as emu:
        store = RefusingStore()
        store.tokens["acct"] = at.Token("", emu.issue_refresh_token("acct"), 0.0)
        async with manager(emu, store, retry_budget=2.0) as mgr:
            with contextlib.suppress(at.AmzTokenError):
                await mgr.get_access_token("acct")  # issued, refused by the store: kept
            emu.fail_next(10**6, status=401)  # invalid_client from now on
            deadline = time.monotonic() + seconds
            errors = 0
            while time.monotonic() < deadline:
                try:
                    await asyncio.wait_for(mgr.get_access_token("acct"), seconds)
                except (at.AmzTokenError, asyncio.TimeoutError):
                    errors += 1
                await asyncio.sleep(0.001)
            requests = emu.token_requests_for("acct")
            last_error = (await mgr.status("acct")).last_error or ""
    return {"requests": requests, "errors": errors, "last_error": last_error.split(":")[0]}


async def tiny_expires_in(seconds: float) -> dict[str, Any]:
    from aioamztoken.testing import AmazonEmulator

    async with AmazonEmulator(token_lifetime=0.01) as emu:
        import aioamztoken as at

        async with manager(emu, at.MemoryTokenStore()) as mgr:
            await mgr.add_account("acct", emu.issue_refresh_token("acct"))
            with contextlib.suppress(at.AmzTokenError):
                await mgr.get_access_token("acct")
            emu.reset_counters()
            await asyncio.sleep(seconds)
            requests = emu.token_requests
    return {"per_second": requests / seconds}


async def uncured_401s(sends: int) -> dict[str, Any]:
    import aiohttp

    import aioamztoken as at
    from aioamztoken.testing import AmazonEmulator

    async with AmazonEmulator() as emu, manager(emu, at.MemoryTokenStore()) as mgr:
        await mgr.add_account("acct", emu.issue_refresh_token("acct"))
        await mgr.get_access_token("acct")
        emu.reset_counters()
        emu.api_fail_next(10**6, status=401)  # every token rejected
        middleware = mgr.middleware("acct", origins=[emu.api_url])
        outcomes: dict[str, int] = {}
        async with aiohttp.ClientSession(middlewares=(middleware,)) as http:
            for _ in range(sends):
                try:
                    async with http.get(f"{emu.api_url}/v2/profiles") as response:
                        await response.read()
                        key = str(response.status)
                except Exception as exc:
                    key = type(exc).__name__
                outcomes[key] = outcomes.get(key, 0) + 1
        return {
            "refreshes": emu.token_requests,
            "sends": emu.api_requests,
            "outcomes": outcomes,
        }


class HungStore:
    """A store on a hung mount: ``load()`` never returns and ignores cancellation (as a
    worker thread stuck in the kernel would) until the scenario ends."""

    def __init__(self) -> None:
        self.released = asyncio.Event()

    async def load(self, account_id: str) -> Any:
        while not self.released.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await self.released.wait()
        raise OSError(5, "Input/output error")

    async def save(self, account_id: str, token: Any) -> None:
        await self.load(account_id)

    async def delete(self, account_id: str) -> None:
        await self.load(account_id)

    async def accounts(self) -> list[str]:
        return []


async def hung_store(limit: float) -> dict[str, Any]:
    from aioamztoken.testing import AmazonEmulator

    async with AmazonEmulator() as emu:
        store = HungStore()
        mgr = manager(emu, store, retry_budget=2.0, request_timeout=2.0)
        calls = [bounded(mgr.get_access_token(f"acct-{n}"), limit) for n in range(10)]
        outcomes = await asyncio.gather(*calls)
        slowest = max(seconds for _, seconds, _ in outcomes)
        stuck = sum(not finished for _, _, finished in outcomes)
        kinds = sorted({type(r).__name__ for r, _, finished in outcomes if finished})
        _, close_seconds, closed = await bounded(mgr.aclose(), limit)
        store.released.set()  # let everything still stuck go, so the process can end
        await asyncio.sleep(0.1)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(mgr.aclose(), 5)
    return {
        "slowest": slowest,
        "stuck": stuck,
        "kinds": kinds,
        "aclose": close_seconds,
        "aclose_done": closed,
    }


async def frozen_redis(accounts: int) -> dict[str, Any]:
    repo_on_path()
    from tests.redis_server import REDIS_SERVER, RedisServer

    if REDIS_SERVER is None:
        return {"skipped": "redis-server is not on the PATH"}
    import aioamztoken as at
    from aioamztoken.testing import AmazonEmulator

    server = RedisServer().start()
    try:
        async with AmazonEmulator() as emu:
            async with at.RedisTokenStore(server.url) as seed:
                for n in range(accounts):
                    token = at.Token("Atza|old", emu.issue_refresh_token(f"a{n}"), 1.0)
                    await seed.save(f"a{n}", token)
            store = at.RedisTokenStore(server.url, max_connections=50, timeout=1.0)
            async with store, manager(emu, store) as mgr:
                server.pause()
                try:
                    calls = [bounded(mgr.get_access_token(f"a{n}"), 30) for n in range(accounts)]
                    outcomes = await asyncio.gather(*calls)
                finally:
                    server.resume()
                recovered, recovery_seconds, _ = await bounded(
                    asyncio.gather(*(mgr.get_access_token(f"a{n}") for n in range(accounts))), 30
                )
    finally:
        server.stop()
    return {
        "slowest": max(seconds for _, seconds, _ in outcomes),
        "kinds": sorted({type(r).__name__ for r, _, done in outcomes if done}),
        "stuck": sum(not done for _, _, done in outcomes),
        "recovered": isinstance(recovered, list),
        "recovery_s": recovery_seconds,
    }


async def file_lock_elsewhere() -> dict[str, Any]:
    import aioamztoken as at

    with tempfile.TemporaryDirectory(dir=tmp_root()) as tmp:
        path = Path(tmp) / "tokens.json"
        lock = Path(tmp) / ".tokens.json.locks" / "file.lock"
        lock.parent.mkdir(mode=0o700)
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import fcntl, os, sys, time\n"
                f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT, 0o600)\n"
                "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(12)",
            ],
            stdout=subprocess.PIPE,
        )
        try:
            assert holder.stdout is not None
            await asyncio.to_thread(holder.stdout.readline)
            store = at.FileTokenStore(path)
            save = asyncio.wait_for(store.save("a", at.Token("Atza|x", "Atzr|x", 2e9)), 2.0)
            _, seconds, _ = await bounded(save, 20)
        finally:
            holder.kill()
            holder.wait()
    return {"seconds": seconds}


SECTIONS: dict[str, Callable[..., Awaitable[dict[str, Any]]]] = {
    "descriptors": descriptors,
    "failing-endpoint": failing_endpoint,
    "tiny-expires-in": tiny_expires_in,
    "uncured-401s": uncured_401s,
    "hung-store": hung_store,
    "frozen-redis": frozen_redis,
    "file-lock": file_lock_elsewhere,
}


def run_section(name: str, *args: Any) -> dict[str, Any]:
    """Run one scenario in a child process; its JSON result, or why there is none."""
    command = [sys.executable, __file__, "--section", name, *map(str, args)]
    started = time.monotonic()
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=SECTION_TIMEOUT, cwd=ROOT
        )
    except subprocess.TimeoutExpired:
        return {"error": f"stopped at {time.monotonic() - started:.0f} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"error": f"exit {done.returncode}: {tail[0][:120]}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def ratio(measured: float, bound: float) -> str:
    return f"{measured / bound:.2f}x" if bound else "-"


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--section":
        name, *args = sys.argv[2:]
        converted = [int(a) if a.isdigit() else float(a) if "." in a else a for a in args]
        print(json.dumps(asyncio.run(SECTIONS[name](*converted))))
        return
    args = parse_args(__doc__.splitlines()[0])
    started = time.monotonic()
    quick = args.quick
    rows: list[Row] = []

    def report(metric: str, result: dict[str, Any], key: str, bound: float, unit: str) -> None:
        if "error" in result or "skipped" in result:
            reason = result.get("error") or result.get("skipped")
            rows.append(Row(metric, f"({reason})", f"<= {bound:g}{unit}", "-"))
            return
        value = float(result[key])
        shown = f"{value:.1f}{unit}" if isinstance(result[key], float) else f"{value:g}{unit}"
        rows.append(Row(metric, shown, f"<= {bound:g}{unit}", ratio(value, bound)))

    plan = [("directory", 2000), ("file", 2000), ("encrypted", 2000), ("directory", 10000)]
    if quick:
        plan = plan[:1]
    for kind, count in plan:
        result = run_section("descriptors", kind, count)
        print(f"descriptors, {kind} store, {count:,} cold accounts: {result}")
        report(
            f"open fds above baseline, {count:,} cold accounts, {kind}",
            result,
            "above",
            FD_BOUND,
            "",
        )
        report(f"callers failed, {count:,} cold accounts, {kind}", result, "failed", 0, "")

    seconds = 3.0 if quick else 6.0
    result = run_section("failing-endpoint", seconds)
    print(f"failing endpoint (save refused, then invalid_client), {seconds:g} s: {result}")
    report(
        f"token requests, save refused + invalid_client, {seconds:g} s", result, "requests", 5, ""
    )

    result = run_section("tiny-expires-in", 3.0)
    print(f"expires_in 0.01 s, 3 s of background refresh: {result}")
    report("background refreshes per second, expires_in 0.01 s", result, "per_second", 1.0, "/s")

    result = run_section("uncured-401s", 100)
    print(f"100 requests, every token rejected (401): {result}")
    report("token refreshes, 100 uncured 401s", result, "refreshes", 2, "")
    report("API sends, 100 uncured 401s", result, "sends", 110, "")

    result = run_section("hung-store", 15.0)
    print(f"hung store, 10 callers, retry_budget=2, request_timeout=2: {result}")
    if result.get("stuck"):
        result["slowest"] = f"{result['slowest']:.0f}"
        rows.append(
            Row("slowest caller, hung store", f">= {result['slowest']} s (stopped)", "<= 3 s", "-")
        )
    else:
        report("slowest caller, hung store", result, "slowest", 3.0, " s")
    if result.get("aclose_done") is False:
        rows.append(
            Row("aclose(), hung store", f">= {result['aclose']:.0f} s (stopped)", "<= 3 s", "-")
        )
    else:
        report("aclose(), hung store", result, "aclose", 3.0, " s")

    result = run_section("frozen-redis", 300)
    print(f"frozen Redis, 300 expired accounts, max_connections=50, timeout=1: {result}")
    report("slowest caller, frozen Redis (timeout=1), about", result, "slowest", 3.0, " s")

    result = run_section("file-lock")
    print(f"another process holds the file lock for 12 s, wait_for(save, 2): {result}")
    report("wait_for(save, 2), file lock held 12 s elsewhere", result, "seconds", 3.0, " s")

    finish("Faults (issue 11): measured beside the bound", rows, args, started)


if __name__ == "__main__":
    main()
