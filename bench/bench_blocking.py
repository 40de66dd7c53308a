"""BlockingTokenManager: the cost of a cached token, and token requests under a cold herd.

Run: ``.venv/bin/python bench/bench_blocking.py`` (a few seconds, against the emulator).

1. Hot path: ``get_access_token`` on a fresh cached token, against the least a
   thread-safe cache can do (a dict lookup under a ``threading.Lock``), same run and
   machine, best of several interleaved rounds. One call that crosses to the loop
   thread (``status``) is timed too, to show what the hot path avoids.
2. Cold herd: N threads released at once on a cold cache. A client that caches per
   thread (as today's most-used Amazon Ads client does) makes N token requests; the
   blocking manager makes one.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import aioamztoken as at
from aioamztoken.testing import AmazonEmulator

HOT_CALLS = 200_000
HOT_ROUNDS = 5
HOP_CALLS = 2_000
HERDS = (32, 64)
HERD_LATENCY = 0.05  # seconds the emulator holds each token request, so the herd overlaps


def ns_per_call(call: Callable[[str], object], calls: int) -> float:
    account = "acct"
    started = time.perf_counter_ns()
    for _ in range(calls):
        call(account)
    return (time.perf_counter_ns() - started) / calls


def hot_path(amazon: AmazonEmulator, mgr: at.BlockingTokenManager) -> None:
    mgr.add_account("acct", amazon.issue_refresh_token("acct"))
    token = mgr.get_access_token("acct")
    requests = amazon.token_requests
    lock = threading.Lock()
    cache = {"acct": token}

    def locked_dict(account: str) -> str:
        with lock:
            return cache[account]

    ours, baseline = [], []
    for _ in range(HOT_ROUNDS):  # interleaved, so that drift hits both alike
        baseline.append(ns_per_call(locked_dict, HOT_CALLS))
        ours.append(ns_per_call(mgr.get_access_token, HOT_CALLS))
    hop = min(ns_per_call(mgr.status, HOP_CALLS) for _ in range(2))
    assert amazon.token_requests == requests, "the hot path made a token request"
    best_ours, best_base = min(ours), min(baseline)
    print(f"hot path, best of {HOT_ROUNDS} rounds x {HOT_CALLS:,} calls, one thread:")
    print(f"  dict lookup under threading.Lock        {best_base:8.1f} ns/op")
    print(f"  BlockingTokenManager.get_access_token   {best_ours:8.1f} ns/op")
    print(f"  ratio (ours / locked dict)              {best_ours / best_base:8.2f}x")
    print(f"  one thread hop, for scale (status)      {hop:8.0f} ns/op")


def naive_herd(amazon: AmazonEmulator, threads: int) -> int:
    """Each thread has its own empty cache, so each POSTs the refresh grant itself."""
    refresh_token = amazon.issue_refresh_token("naive")
    body = urllib.parse.urlencode(
        {
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": amazon.client_id,
            "client_secret": amazon.client_secret,
        }
    ).encode()
    barrier = threading.Barrier(threads)

    def fetch(_: int) -> None:
        barrier.wait(timeout=10)
        with urllib.request.urlopen(amazon.token_url, data=body, timeout=10) as resp:
            resp.read()

    before = amazon.token_requests
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(fetch, range(threads)))
    return amazon.token_requests - before


def managed_herd(amazon: AmazonEmulator, mgr: at.BlockingTokenManager, threads: int) -> int:
    account = f"herd-{threads}"
    mgr.add_account(account, amazon.issue_refresh_token(account))  # cold: no access token
    barrier = threading.Barrier(threads)

    def fetch(_: int) -> str:
        barrier.wait(timeout=10)
        return mgr.get_access_token(account)

    before = amazon.token_requests
    with ThreadPoolExecutor(threads) as pool:
        tokens = set(pool.map(fetch, range(threads)))
    assert len(tokens) == 1
    return amazon.token_requests - before


def main() -> None:
    started = time.monotonic()
    with (
        AmazonEmulator.running_in_thread() as amazon,
        at.BlockingTokenManager(
            amazon.client_id,
            amazon.client_secret,
            store=at.MemoryTokenStore(),
            token_url=amazon.token_url,
        ) as mgr,
    ):
        hot_path(amazon, mgr)
        amazon.latency = HERD_LATENCY
        print(f"cold herd (token requests, emulator latency {HERD_LATENCY * 1000:.0f} ms):")
        for threads in HERDS:
            naive = naive_herd(amazon, threads)
            ours = managed_herd(amazon, mgr, threads)
            print(f"  {threads} threads: per-thread cache {naive:3d}, BlockingTokenManager {ours}")
    print(f"done in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
