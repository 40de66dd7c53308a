"""A real refresh wave: token requests per second, and requests in flight against the cap.

Run: ``python docs/figures/waves.py OUT.svg [DATA.json]`` (the docs build runs it on
``docs/figures/waves.json``, which ``python bench/bench_waves.py --data
docs/figures/waves.json`` recorded: 10,000 tokens due at the same moment, a 20 s
``refresh_buffer`` and so a 10 s jitter window, the default cap of 10 requests in flight).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from _style import ACCENT, DUE, INK, MARGIN, MUTED, save
from matplotlib import pyplot as plt

HERE = Path(__file__).resolve().parent


def draw(data: dict) -> plt.Figure:
    width = data["bin_width"]
    times = [t for t, _ in data["bins"]]
    rates = [n / width for _, n in data["bins"]]
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(8.2, 4.8), sharex=True, gridspec_kw={"height_ratios": [3, 2], "hspace": 0.12}
    )
    window = data["window"]
    for ax in (top, bottom):
        ax.axvspan(0, window, color=DUE, alpha=0.13, lw=0)
        ax.spines[["top", "right"]].set_visible(False)
    top.bar(times, rates, width=width, align="edge", color=ACCENT, lw=0)
    span = (max(times) + width - min(times)) if times else 1.0
    mean = data["token_requests"] / span
    top.axhline(mean, color=INK, lw=1, ls="--")
    top.text(max(times) + width + 0.1, mean + max(rates) * 0.02, f"mean {mean:,.0f}/s", va="bottom",
             ha="left",
             fontsize=8.5, color=INK)
    top.set_ylabel("token requests per second")
    top.set_ylim(0, max(rates) * 1.3)
    top.text(window / 2, max(rates) * 1.18, f"jitter window ({window:g} s)", ha="center",
             fontsize=9, color="#9a6b00")
    top.set_title(
        f"{data['accounts']:,} tokens due at the same moment: {data['token_requests']:,} "
        "requests, spread over the jitter window and held to the cap",
        fontsize=9.5, loc="left", color=INK,
    )
    samples = data["in_flight"]
    bottom.step([t for t, _ in samples], [n for _, n in samples], where="post", color=ACCENT,
                lw=0.9)
    cap = data["cap"]
    bottom.axhline(cap, color=MARGIN, lw=1.4)
    bottom.text(0.0, cap + 0.3, f"cap: max_concurrent_refreshes = {cap}", color=MARGIN,
                fontsize=8.5, va="bottom")
    bottom.set_ylim(0, cap * 1.45)
    bottom.set_ylabel("in flight")
    bottom.set_xlabel("seconds since the tokens became due (expires_at − refresh_buffer)")
    bottom.set_xlim(min(-0.5, min(times, default=0)), max(window + 1.0, span) + 1.6)
    fig.text(0.99, 0.005, f"recorded {data['recorded']}: {data['command']}", ha="right",
             fontsize=7.5, color=MUTED)
    return fig


if __name__ == "__main__":
    source = Path(sys.argv[2]) if len(sys.argv) > 2 else HERE / "waves.json"
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "waves.svg")
    save(draw(json.loads(source.read_text(encoding="utf-8"))), out)
