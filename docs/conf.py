"""Sphinx configuration for aioamztoken.

Build: ``sphinx-build -W --keep-going -b html docs docs/_build/html`` (``tox -e docs``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import aioamztoken

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "figures"))

project = "aioamztoken"
author = "The aioamztoken developers"
copyright = "2026, the aioamztoken developers"
release = aioamztoken.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "sphinx.ext.graphviz",
]

# The pictures: matplotlib figures drawn by docs/figures/*.py into docs/_generated/ at every
# build, and Graphviz sources rendered by Debian's `dot`; all SVG, nothing fetched.
graphviz_output_format = "svg"
graphviz_dot_args = ["-Gfontname=DejaVu Sans"]

# The docstrings are plain reStructuredText (no Google/NumPy sections), so no napoleon:
# it would read "Valid, inside the refresh buffer: ..." attribute docstrings as types.
autodoc_member_order = "bysource"
# Types go in the signatures (one parameter per line when long): the docstrings describe
# parameters in prose, so "description" mode would only add lists of bare types.
autodoc_typehints = "signature"
python_maximum_signature_line_length = 88
autodoc_default_options = {"members": True}  # api.rst shows bases where they say something

# Every cross-reference must resolve (with -W, a broken one fails the build). The docs
# build offline, so there is no intersphinx: names from the standard library and from
# third-party packages are shown unlinked.
nitpicky = True
_EXTERNAL = (
    "aiohttp|asyncio|asyncpg|collections|concurrent|contextlib|enum|httpx|keyring|logging|os|"
    "redis|requests|"
    "sqlite3|typing|yarl"
)
nitpick_ignore_regex = [
    ("py:.*", rf"({_EXTERNAL})(\..+)?"),
    # Type aliases in signatures (spelled out in the docstrings), and keyring's backend type.
    ("py:class", r"Origins|OnRefresh|OnRefreshError|OnReauthRequired|KeyringBackend"),
    ("py:class", r"OnReauthDue|ClientAuth"),
    # The consent app (docs/web.rst): its operator alias, its private sealer, aiohttp.web.
    ("py:class", r"Operator|StateSealer|web\..+"),
    # The token sources the adapters read (documented in the signing policy) and a TypeVar.
    ("py:class", r"(Blocking)?AccountTokenSource|GrantlessTokenSource|_R"),
]

html_theme = "furo"
html_title = f"aioamztoken {release}"
html_static_path = ["_static"]
html_css_files = ["aioamztoken.css"]
pygments_style = "sphinx"
exclude_patterns = ["_build", "figures"]


def _render_figures(app: Any) -> None:
    from build import render_all

    render_all(HERE / "_generated")


def setup(app: Any) -> None:
    app.connect("builder-inited", _render_figures)
