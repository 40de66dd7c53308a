"""The pictures of the docs: drawn by scripts in the repo, from real data, offline."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ROOT / "docs" / "figures"

pytest.importorskip("matplotlib", reason="the docs extra is not installed")


def render(out: Path) -> list[Path]:
    done = subprocess.run(
        [sys.executable, str(FIGURES / "build.py"), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [Path(line) for line in done.stdout.split()]


def test_the_figures_are_drawn_the_same_every_time_and_fetch_nothing(tmp_path: Path) -> None:
    first = render(tmp_path / "a")
    second = render(tmp_path / "b")
    assert [p.name for p in first] == ["lifetime.svg", "consent.svg", "waves.svg"]
    for a, b in zip(first, second, strict=True):
        svg = a.read_bytes()
        assert svg == b.read_bytes(), a.name  # reproducible: no date, fixed ids
        assert b"<svg" in svg
        assert b"<image" not in svg  # no raster, nothing linked
        assert b"@import" not in svg
        assert b"url(http" not in svg


def test_the_wave_figure_is_a_real_run_of_the_benchmark() -> None:
    data = json.loads((FIGURES / "waves.json").read_text(encoding="utf-8"))
    assert data["command"] == "python bench/bench_waves.py --data docs/figures/waves.json"
    assert sum(n for _, n in data["bins"]) == data["token_requests"] == data["accounts"]
    assert max(n for _, n in data["in_flight"]) <= data["cap"] == 10
    assert data["peak_in_flight"] <= data["cap"]
    # Spread over the jitter window (and a little after it, while the cap drains the queue).
    times = [t for t, _ in data["bins"]]
    assert min(times) >= -data["bin_width"]
    assert max(times) < data["window"] + 5
    assert max(n for _, n in data["bins"]) < data["accounts"] / 10


async def test_bench_waves_writes_the_data_the_figure_reads(tmp_path: Path) -> None:
    from bench.bench_waves import run_waves, write_data

    sys.path.insert(0, str(FIGURES))
    import waves

    run = await run_waves(accounts=200, buffer=2.0, lead=0.5)
    write_data(str(tmp_path / "waves.json"), run)
    data = json.loads((tmp_path / "waves.json").read_text(encoding="utf-8"))
    assert sum(n for _, n in data["bins"]) == run.token_requests == 200
    assert data["in_flight"]
    assert data["cap"] == 10
    figure = waves.draw(data)
    assert figure.axes[0].get_ylabel() == "token requests per second"


def test_the_fleet_diagram_is_valid_graphviz(tmp_path: Path) -> None:
    dot = shutil.which("dot")
    if dot is None:
        pytest.skip("Graphviz is not installed (apt-get install graphviz)")
    done = subprocess.run(
        [dot, "-Tsvg", str(FIGURES / "fleet.dot")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "release the lock" in done.stdout
    assert "Warning" not in done.stderr
