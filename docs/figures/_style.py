"""What the figures share: the palette, fonts, and a reproducible SVG writer.

Text is drawn as paths (matplotlib's default for SVG) with the DejaVu fonts matplotlib
ships, so a page shows the figures the same way everywhere, offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

FRESH = "#3a9d5d"
DUE = "#e0a526"
MARGIN = "#d1495b"
EXPIRED = "#8d99ae"
INK = "#1f2933"
MUTED = "#52606d"
ACCENT = "#2f6fb5"
PAPER = "#ffffff"

plt.rcParams.update(
    {
        "font.family": "DejaVu Sans",
        "font.size": 10,
        "axes.edgecolor": MUTED,
        "axes.labelcolor": INK,
        "text.color": INK,
        "xtick.color": MUTED,
        "ytick.color": MUTED,
        "svg.hashsalt": "aioamztoken",
        "svg.fonttype": "path",
        "figure.facecolor": PAPER,
    }
)


def save(fig: Any, path: Path) -> Path:
    """Write ``fig`` as SVG, byte-identical from run to run, and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="svg", metadata={"Date": None}, bbox_inches="tight")
    plt.close(fig)
    return path
