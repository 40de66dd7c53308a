"""Sphinx configuration for aioamztoken."""

from __future__ import annotations

import aioamztoken

project = "aioamztoken"
author = "The aioamztoken developers"
copyright = "2026, the aioamztoken developers"  # noqa: A001
release = aioamztoken.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "sphinx.ext.napoleon",
]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
nitpicky = False
intersphinx_mapping: dict[str, tuple[str, str | None]] = {}

html_theme = "furo"
html_title = f"aioamztoken {release}"
exclude_patterns = ["_build"]
