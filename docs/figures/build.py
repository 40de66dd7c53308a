"""Render the figures of the docs into a folder (the docs build calls :func:`render_all`).

Run: ``python docs/figures/build.py [OUT_DIR]`` (default ``docs/_generated``). The figures
are SVG, drawn by matplotlib from the scripts beside this one (and, for the refresh wave,
from ``waves.json``, a real run of ``bench/bench_waves.py``); nothing is fetched. The
fleet diagram is Graphviz source (``fleet.dot``), rendered by ``sphinx.ext.graphviz``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


def render_all(out_dir: Path) -> list[Path]:
    """Write ``lifetime.svg``, ``consent.svg`` and ``waves.svg`` into ``out_dir``."""
    import consent
    import lifetime
    import waves
    from _style import save

    data = json.loads((HERE / "waves.json").read_text(encoding="utf-8"))
    return [
        save(lifetime.draw(), out_dir / "lifetime.svg"),
        save(consent.draw(), out_dir / "consent.svg"),
        save(waves.draw(data), out_dir / "waves.svg"),
    ]


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parent / "_generated"
    for path in render_all(target):
        print(path)
