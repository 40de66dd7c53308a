"""The consent flow (authorization code grant) with ``state`` and PKCE, as a sequence diagram.

Run: ``python docs/figures/consent.py OUT.svg`` (the docs build runs it). The parameters are
Login with Amazon's (``/ap/oa`` and ``/auth/o2/token``, see ``aioamztoken/_lwa.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from _style import ACCENT, FRESH, INK, MARGIN, MUTED, save
from matplotlib import pyplot as plt
from matplotlib.patches import FancyBboxPatch

LANES = [
    ("Browser", "the advertiser"),
    ("Your app", "aioamztoken"),
    ("Consent page", "www.amazon.com/ap/oa"),
    ("Token endpoint", "api.amazon.com/auth/o2/token"),
    ("Store", "your token store"),
]
X = {name: i * 2.8 for i, (name, _) in enumerate(LANES)}

# (from, to, label, colour); from == to is a note on that lifeline.
STEPS = [
    ("Your app", "Your app", "state = a random value (CSRF)\ncode_verifier = random;\n"
     "code_challenge = BASE64URL(SHA-256(verifier))", ACCENT),
    ("Your app", "Browser", "302 to the consent URL: client_id, scope,\nresponse_type=code, "
     "redirect_uri, state,\ncode_challenge, code_challenge_method=S256", INK),
    ("Browser", "Consent page", "GET /ap/oa?…  the advertiser signs in and allows the app", INK),
    ("Consent page", "Browser", "302 to redirect_uri?code=…&state=…\n(the code works once, "
     "for 5 minutes)", INK),
    ("Browser", "Your app", "GET redirect_uri?code=…&state=…", INK),
    ("Your app", "Your app", "state is ours? (constant-time compare)\nno: stop, nothing stored",
     MARGIN),
    ("Your app", "Token endpoint", "POST grant_type=authorization_code, code, redirect_uri,\n"
     "code_verifier, client_id, client_secret", INK),
    ("Token endpoint", "Token endpoint", "SHA-256(code_verifier)\n= code_challenge?", ACCENT),
    ("Token endpoint", "Your app", "200 access_token (1 h), refresh_token", FRESH),
    ("Your app", "Store", "save(account, token), before anyone gets it", FRESH),
]


def _rows(label: str) -> int:
    return label.count("\n") + 1


def draw() -> plt.Figure:
    heights = [0.3 * _rows(label) + 0.5 for _, _, label, _ in STEPS]
    bottom = -sum(heights) - 0.9
    fig, ax = plt.subplots(figsize=(11, (1.0 - bottom) * 0.55))
    ax.set_xlim(-1.4, X["Store"] + 1.4)
    ax.set_ylim(bottom, 1.0)
    ax.axis("off")
    for name, subtitle in LANES:
        x = X[name]
        ax.add_patch(FancyBboxPatch((x - 1.3, 0.05), 2.6, 0.75, boxstyle="round,pad=0.02",
                                    fc="#eef2f7", ec=MUTED, lw=1))
        ax.text(x, 0.52, name, ha="center", va="center", fontsize=10.5, fontweight="bold")
        ax.text(x, 0.24, subtitle, ha="center", va="center", fontsize=7, color=MUTED)
        ax.plot([x, x], [0.05, bottom + 0.2], color=MUTED, lw=1, ls=(0, (4, 3)), zorder=0)
    y = -0.35
    steps = zip(STEPS, heights, strict=True)
    for number, ((src, dst, label, color), step_h) in enumerate(steps, 1):
        x0, x1 = X[src], X[dst]
        text = f"{number}. {label}"
        if src == dst:
            ax.text(x0, y - step_h / 2, text, ha="center", va="center", fontsize=9, color=color,
                    bbox={"boxstyle": "round,pad=0.4", "fc": "white", "ec": color, "lw": 1.2})
        else:
            arrow_y = y - step_h + 0.2
            ax.annotate("", xy=(x1, arrow_y), xytext=(x0, arrow_y),
                        arrowprops={"arrowstyle": "-|>", "color": color, "lw": 1.3,
                                    "shrinkA": 0, "shrinkB": 0})
            ax.text((x0 + x1) / 2, arrow_y + 0.08, text, ha="center", va="bottom", fontsize=9,
                    color=color, bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none"})
        y -= step_h
    return fig


if __name__ == "__main__":
    save(draw(), Path(sys.argv[1] if len(sys.argv) > 1 else "consent.svg"))
