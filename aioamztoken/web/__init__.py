"""Onboard accounts on the web: an aiohttp.web consent app and operator page.

``consent_app(manager, redirect_uri=...)`` returns an ``aiohttp.web.Application`` to mount
with ``app.add_subapp("/amazon", ...)``. See :func:`consent_app` for the routes and the two
Amazon flows (Ads API consent with PKCE, and SP-API's website authorization workflow).
"""

from __future__ import annotations

from ._app import SELLER_CENTRAL_URLS, SETTINGS, ConsentSettings, consent_app

__all__ = ["SELLER_CENTRAL_URLS", "SETTINGS", "ConsentSettings", "consent_app"]
