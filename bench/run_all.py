"""Run every benchmark, each in a process of its own, then print one summary table.

Run: ``.venv/bin/python bench/run_all.py`` (about 2 minutes; ``--quick``: under 1).

Each benchmark prints its details as it runs; the table at the end gathers every
figure beside the baseline it was measured against, all from this one run. The soak
(``bench/soak.py``, 40 s) is not included; run it on its own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import Row, render

BENCHES = [
    "bench_hot_path.py",
    "bench_herd.py",
    "bench_stores.py",
    "bench_memory.py",
    "bench_fleet.py",
    "bench_waves.py",
]
#: Seconds a benchmark may run before it is stopped (each is far quicker).
TIMEOUT = 300


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller, faster runs")
    args = parser.parse_args(argv)
    here = Path(__file__).resolve().parent
    rows: list[Row] = []
    failed: list[str] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        for name in BENCHES:
            print(f"=== {name}", flush=True)
            out = Path(tmp) / f"{name}.json"
            command = [sys.executable, str(here / name), "--json", str(out)]
            if args.quick:
                command.append("--quick")
            try:
                done = subprocess.run(command, timeout=TIMEOUT, check=False)
            except subprocess.TimeoutExpired:
                failed.append(f"{name} (timed out after {TIMEOUT} s)")
                continue
            if done.returncode != 0 or not out.exists():
                failed.append(f"{name} (exit status {done.returncode})")
                continue
            rows += [Row(**row) for row in json.loads(out.read_text())]
            print(flush=True)
    print(render("=== summary: every figure beside its baseline, one run", rows))
    print(f"({time.monotonic() - started:.0f} s, Python {sys.version.split()[0]})")
    if failed:
        print("failed: " + ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
