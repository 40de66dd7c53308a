"""What the benchmarks share: interleaved timing, the summary rows, and the repo on sys.path.

Every benchmark prints its details, then a summary (metric, ours, baseline, ratio);
``--json PATH`` also writes the summary rows there, for ``bench/run_all.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def repo_on_path() -> None:
    """Make ``tests.*`` helpers importable when a bench runs as ``python bench/x.py``."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


AUTHLIB_MISSING = "Authlib not installed: line skipped (.venv/bin/pip install authlib httpx)"


def authlib_client_class() -> Any:
    """Authlib's ``AsyncOAuth2Client``, or ``None`` if Authlib (a peer, for comparison
    only, never a dependency of the project) is not installed."""
    with warnings.catch_warnings():
        try:
            import authlib.deprecate  # noqa: F401  (on import it turns its warnings "always" on)
        except ImportError:
            return None
        warnings.simplefilter("ignore")  # its notice that plain httpx is deprecated
        from authlib.integrations.httpx_client import AsyncOAuth2Client
    return AsyncOAuth2Client


@dataclass(frozen=True)
class Row:
    """One line of a benchmark's summary: a figure and the baseline it is measured against."""

    metric: str
    ours: str
    baseline: str
    ratio: str


def render(title: str, rows: Sequence[Row]) -> str:
    header = Row("metric", "aioamztoken", "baseline", "ratio")
    widths = [max(len(getattr(r, f)) for r in (header, *rows)) for f in Row.__annotations__]
    lines = [title]
    for row in (header, *rows):
        cells = [getattr(row, f).ljust(w) for f, w in zip(Row.__annotations__, widths, strict=True)]
        lines.append("  " + "  ".join(cells).rstrip())
    return "\n".join(lines)


def parse_args(
    description: str, argv: list[str] | None = None, *, data: str | None = None
) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--json", help="also write the summary rows to this file")
    parser.add_argument("--quick", action="store_true", help="smaller, faster run")
    if data is not None:
        parser.add_argument("--data", metavar="PATH", help=data)
    return parser.parse_args(argv)


def finish(title: str, rows: Sequence[Row], args: argparse.Namespace, started: float) -> None:
    print()
    print(render(title, rows))
    print(f"({time.monotonic() - started:.1f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows]))


async def ns_per_call(call: Callable[[str], Awaitable[object]], key: str, calls: int) -> float:
    """Nanoseconds per ``await call(key)``, loop included, over ``calls`` calls."""
    started = time.perf_counter_ns()
    for _ in range(calls):
        await call(key)
    return (time.perf_counter_ns() - started) / calls


@dataclass(frozen=True)
class Timing:
    """Per-call times of several contenders, measured in interleaved rounds."""

    rounds: dict[str, list[float]]

    def median(self, name: str) -> float:
        return statistics.median(self.rounds[name])

    def best(self, name: str) -> float:
        return min(self.rounds[name])

    def median_ratio(self, name: str, baseline: str) -> float:
        """The median over rounds of ``name / baseline`` within each round."""
        pairs = zip(self.rounds[name], self.rounds[baseline], strict=True)
        return statistics.median(a / b for a, b in pairs)


async def interleaved(
    contenders: dict[str, Callable[[str], Awaitable[object]]],
    key: str,
    *,
    rounds: int,
    calls: int,
    slow: dict[str, int] | None = None,
) -> Timing:
    """Time each contender for ``calls`` calls (``calls // slow[name]`` for a slow one),
    round after round, alternating the order each round, so that drift and load hit
    every contender alike."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    counts = {name: max(1, calls // (slow or {}).get(name, 1)) for name in names}
    for _ in range(2):  # warm-up
        for name in names:
            await ns_per_call(contenders[name], key, counts[name] // 10 or 1)
    for number in range(rounds):
        order = names if number % 2 == 0 else names[::-1]
        for name in order:
            times[name].append(await ns_per_call(contenders[name], key, counts[name]))
    return Timing(times)
