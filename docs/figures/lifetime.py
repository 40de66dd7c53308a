"""The lifetime of one access token: fresh, due (the refresh buffer), the jitter window in
which its background refresh fires, and the expiry margin.

Run: ``python docs/figures/lifetime.py OUT.svg`` (the docs build runs it).
The right part is to scale for the defaults (``refresh_buffer`` 300 s, so a 150 s jitter
window, and an ``expiry_margin`` of 30 s); the first 55 minutes are shortened.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from _style import DUE, EXPIRED, FRESH, INK, MARGIN, MUTED, save
from matplotlib import pyplot as plt
from matplotlib.patches import Rectangle

# x positions: 1 unit = 60 s inside the buffer; the time before it is not to scale.
ISSUED, DUE_AT, JITTER_END, USABLE_UNTIL, EXPIRES, AFTER = 0.0, 4.0, 6.5, 8.5, 9.0, 10.0


def bracket(ax, x0: float, x1: float, y: float, text: str, color: str, *, up: bool = True) -> None:
    tick = 0.12 if up else -0.12
    ax.plot([x0, x0, x1, x1], [y - tick, y, y, y - tick], color=color, lw=1.4)
    ax.text(
        (x0 + x1) / 2, y + (0.12 if up else -0.12), text, ha="center",
        va="bottom" if up else "top", color=color, fontsize=9.5,
    )


def draw() -> plt.Figure:
    fig, ax = plt.subplots(figsize=(10, 3.6))
    ax.set_xlim(-0.3, AFTER + 0.4)
    ax.set_ylim(-1.75, 2.6)
    ax.axis("off")
    bar_y, bar_h = 0.0, 0.5
    bands = [
        (ISSUED, DUE_AT, FRESH, ""),
        (DUE_AT, USABLE_UNTIL, DUE, "due: served at once,\nrefreshed in the background"),
        (USABLE_UNTIL, EXPIRES, MARGIN, ""),
        (EXPIRES, AFTER, EXPIRED, "expired"),
    ]
    for x0, x1, color, label in bands:
        ax.add_patch(Rectangle((x0, bar_y), x1 - x0, bar_h, color=color, lw=0))
        if label:
            ax.text((x0 + x1) / 2, bar_y + bar_h / 2, label, ha="center", va="center",
                    color="white", fontsize=9, fontweight="bold")
    ax.text((0.8 + DUE_AT) / 2, bar_y + bar_h / 2, "fresh: served from the cache\n(a dict lookup)",
            ha="center", va="center", color="white", fontsize=9, fontweight="bold")
    # The shortened stretch of the fresh band.
    for dx in (0.0, 0.12):
        ax.plot([0.55 + dx, 0.7 + dx], [bar_y - 0.08, bar_y + bar_h + 0.08], color="white", lw=3)
        ax.plot([0.55 + dx, 0.7 + dx], [bar_y - 0.08, bar_y + bar_h + 0.08], color=MUTED, lw=1)

    bracket(ax, DUE_AT, EXPIRES, 1.55, "refresh_buffer (300 s)", INK)
    bracket(ax, DUE_AT, JITTER_END, 0.85, "jitter window (buffer / 2)", MUTED)
    bracket(ax, USABLE_UNTIL, EXPIRES, 0.85, "expiry margin (30 s)", MARGIN)
    # Where the background refreshes of a few accounts issued together happen to fire.
    rng = random.Random(4)
    for _ in range(9):
        x = rng.uniform(DUE_AT, JITTER_END)
        ax.plot([x], [bar_y + bar_h + 0.12], marker="v", color=INK, ms=5)
    ax.text(DUE_AT - 0.15, 1.05, "each ▼: the background refresh of one account, fired at\n"
            "a random moment of the window, so that tokens issued\n"
            "together do not all refresh at once",
            ha="right", va="center", fontsize=8.5, color=MUTED)

    labels = [
        (ISSUED, "issued\n(expires_in 3600 s)"),
        (DUE_AT, "expires_at\n− 300 s"),
        (JITTER_END, "expires_at\n− 150 s"),
        (USABLE_UNTIL, "expires_at\n− 30 s"),
        (EXPIRES + 0.05, "expires_at"),
    ]
    for x, text in labels:
        ax.plot([x, x], [bar_y - 0.05, bar_y - 0.2], color=MUTED, lw=1)
        align = "left" if x > EXPIRES else "right" if x == USABLE_UNTIL else "center"
        ax.text(x, bar_y - 0.28, text, ha=align, va="top",
                fontsize=8.5, color=MUTED)
    ax.text(AFTER + 0.35, -1.0, "callers wait for a refresh only in the red and grey parts:\n"
            "a token inside the margin, or expired", ha="right", va="top", fontsize=8.5,
            color=MARGIN)
    ax.text(2.0, -1.0, "time →  (the first 55 minutes shortened; the buffer to scale)",
            ha="center", fontsize=8.5, color=MUTED)
    return fig


if __name__ == "__main__":
    save(draw(), Path(sys.argv[1] if len(sys.argv) > 1 else "lifetime.svg"))
