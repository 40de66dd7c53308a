"""The emulator's consent pages: Login with Amazon's ``/ap/oa`` and Seller Central's
``/apps/authorize/consent``, as HTML pages with "Allow" and "Deny" buttons.

A browser (``Accept: text/html``) is shown the page; the buttons post the decision back to
the same path, which redirects to the app's redirect URI:

- Ads, allowed: ``redirect_uri?code=…&scope=…&state=…``; denied:
  ``redirect_uri?error=access_denied&error_description=…&state=…`` (RFC 6749 4.1.2.1).
- SP-API, allowed: ``redirect_uri?state=…&selling_partner_id=…&spapi_oauth_code=…``, as the
  website authorization workflow documents; denied: the same ``error=access_denied`` shape
  (Seller Central's own "Cancel" leaves the seller on Seller Central; the emulator
  redirects so that an app's error path can be tested).

A client that does not ask for HTML (aiohttp's ``Accept: */*``) gets the old behaviour:
an immediate 302 as if "Allow" had been clicked. :attr:`ConsentPages.consent_page`
forces one or the other.
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from aiohttp import hdrs, web

if TYPE_CHECKING:
    from ._emulator import AmazonEmulator

__all__ = ["SELLER_CENTRAL_PATH", "ConsentPages", "add_consent_routes", "ads_consent"]

SELLER_CENTRAL_PATH = "/apps/authorize/consent"
_DECISION = "decision"


class ConsentPages:
    """The knobs of the emulator's consent pages (a mixin of :class:`AmazonEmulator`)."""

    consent_page: bool | None = None
    """``None`` (default): show the HTML consent page to clients that ask for HTML, and
    approve at once (302) for others; ``True``: always the page; ``False``: never."""
    selling_partner_id: str = "A1EMULATORSELLER"
    """The seller who "signs in" on the Seller Central page (it can be edited there)."""
    spapi_application_id: str = "amzn1.sp.solution.emulator-app"
    """The only SP-API application id the Seller Central page knows."""
    spapi_app_draft: bool = False
    """The app is in draft status: its consent URL must carry ``version=beta`` (else the
    page answers Amazon's ``MD1000`` error)."""
    spapi_redirect_uris: tuple[str, ...] = ()
    """The app's registered OAuth redirect URIs. Empty: any ``redirect_uri`` is accepted.
    A consent URL without ``redirect_uri`` goes to the first of them."""
    last_seller_consent: dict[str, str] | None = None
    """The query string of the last visit to the Seller Central consent page."""


def _wants_page(emulator: AmazonEmulator, request: web.Request) -> bool:
    if emulator.consent_page is not None:
        return emulator.consent_page
    accept = request.headers.get(hdrs.ACCEPT, "")
    return "text/html" in accept.lower()


def _redirect(target: str, params: dict[str, str]) -> web.Response:
    separator = "&" if "?" in target else "?"
    return web.Response(status=302, headers={hdrs.LOCATION: target + separator + urlencode(params)})


def _deny(target: str, state: str | None) -> web.Response:
    params = {"error": "access_denied", "error_description": "The user denied the request"}
    if state is not None:
        params["state"] = state
    return _redirect(target, params)


def _page(
    site: str, title: str, heading: str, intro: str, fields: dict[str, str], account: str
) -> str:
    hidden = "\n".join(
        f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">' for k, v in fields.items()
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<style>
body {{ font: 16px/1.5 Arial, sans-serif; background: #eaeded; margin: 0; color: #0f1111; }}
header {{ background: #232f3e; color: #fff; padding: .8rem 1.5rem; font-weight: bold; }}
main {{ max-width: 32rem; margin: 2rem auto; background: #fff; padding: 1.5rem 2rem;
        border: 1px solid #d5d9d9; border-radius: 8px; }}
label {{ display: block; font-weight: bold; margin-top: 1rem; }}
input[type=text] {{ font: inherit; padding: .4rem; width: 100%; box-sizing: border-box; }}
.buttons {{ margin-top: 1.5rem; display: flex; gap: 1rem; }}
button {{ font: inherit; padding: .5rem 1.5rem; border-radius: 8px; cursor: pointer;
          border: 1px solid #888c8c; background: #fff; }}
button.allow {{ background: #ffd814; border-color: #fcd200; font-weight: bold; }}
button:focus-visible, input:focus-visible {{ outline: 3px solid #007185; }}
</style>
</head>
<body>
<header>{escape(site)} (emulator)</header>
<main>
<h1>{escape(heading)}</h1>
{intro}
<form method="post">
{hidden}
<label for="account">Signed in as</label>
<input type="text" id="account" name="account" value="{escape(account)}">
<div class="buttons">
<button type="submit" class="allow" name="{_DECISION}" value="allow">Allow</button>
<button type="submit" name="{_DECISION}" value="deny">Deny</button>
</div>
</form>
</main>
</body>
</html>
"""


async def _decision(request: web.Request) -> tuple[dict[str, str], str, str | None]:
    """The original query, the account, and the decision of a posted consent form."""
    form = dict(await request.post())
    fields = {k: str(v) for k, v in form.items()}
    decision = fields.pop(_DECISION, None)
    account = fields.pop("account", "").strip()
    return fields, account, decision


async def ads_consent(emulator: AmazonEmulator, request: web.Request) -> web.StreamResponse | None:
    """The HTML page or the posted decision of ``/ap/oa``; ``None`` for the old behaviour
    (a request that did not ask for the page, or one the old code must refuse)."""
    if request.method == hdrs.METH_POST:
        query, account, decision = await _decision(request)
    elif request.method == hdrs.METH_GET and _wants_page(emulator, request):
        query, account, decision = dict(request.query), emulator.consent_account, None
    else:
        return None
    with emulator._lock:
        emulator.last_consent = query
    problem = emulator._consent_problem(query)
    if problem is not None:
        return web.Response(status=400, text=f"Bad consent request: {problem}")
    redirect_uri = query["redirect_uri"]
    if decision is None:
        intro = (
            f"<p>The application <strong>{escape(query.get('client_id', ''))}</strong> "
            "would like to access your Amazon Ads data:</p>\n"
            f"<p><code>{escape(query.get('scope', '(no scope)'))}</code></p>"
        )
        html = _page("amazon", "Amazon sign-in: consent", "Allow access?", intro, query, account)
        return web.Response(text=html, content_type="text/html")
    if decision != "allow":
        return _deny(redirect_uri, query.get("state"))
    code = emulator.issue_code(
        account or emulator.consent_account,
        redirect_uri=redirect_uri,
        code_challenge=query.get("code_challenge"),
    )
    params = {"code": code}
    params.update({k: query[k] for k in ("scope", "state") if k in query})
    return _redirect(redirect_uri, params)


def _seller_problem(emulator: AmazonEmulator, query: dict[str, str]) -> str | None:
    if query.get("application_id") != emulator.spapi_application_id:
        return "unknown application_id"
    if emulator.spapi_app_draft and query.get("version") != "beta":
        return (
            "MD1000: the application is in draft status; add version=beta to the authorization URI"
        )
    registered = emulator.spapi_redirect_uris
    redirect_uri = query.get("redirect_uri")
    if redirect_uri and registered and redirect_uri not in registered:
        return "MD5101: redirect_uri is not one of the application's OAuth redirect URIs"
    if not redirect_uri and not registered:
        return "no redirect_uri, and the application has no OAuth redirect URI registered"
    return None


async def seller_central_consent(
    emulator: AmazonEmulator, request: web.Request
) -> web.StreamResponse:
    """Seller Central's consent page (GET) and the decision posted from it."""
    if request.method == hdrs.METH_POST:
        query, seller, decision = await _decision(request)
    elif request.method in (hdrs.METH_GET, hdrs.METH_HEAD):
        query, seller = dict(request.query), emulator.selling_partner_id
        decision = None if _wants_page(emulator, request) else "allow"
    else:
        return web.Response(status=405, headers={hdrs.ALLOW: "GET, POST"})
    with emulator._lock:
        emulator.last_seller_consent = query
    problem = _seller_problem(emulator, query)
    if problem is not None:
        return web.Response(status=400, text=f"Bad authorization request: {problem}")
    redirect_uri = query.get("redirect_uri") or emulator.spapi_redirect_uris[0]
    if decision is None:
        intro = (
            "<p>Seller Central: the application "
            f"<strong>{escape(query.get('application_id', ''))}</strong> asks to call the "
            "Selling Partner API on your behalf.</p>"
            + (
                "<p>(A draft application: <code>version=beta</code>.)</p>"
                if query.get("version") == "beta"
                else ""
            )
        )
        html = _page(
            "amazon seller central",
            "Seller Central: authorize",
            "Authorize this application?",
            intro,
            query,
            seller,
        )
        return web.Response(text=html, content_type="text/html")
    if decision != "allow":
        return _deny(redirect_uri, query.get("state"))
    seller = seller or emulator.selling_partner_id
    code = emulator.issue_code(seller, redirect_uri=redirect_uri)
    params = {"selling_partner_id": seller, "spapi_oauth_code": code}
    if "state" in query:
        params = {"state": query["state"], **params}
    return _redirect(redirect_uri, params)


def add_consent_routes(emulator: AmazonEmulator, app: web.Application) -> None:
    """Add the Seller Central consent page to the emulator's app (before its catch-all)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        return await seller_central_consent(emulator, request)

    app.router.add_route("*", SELLER_CENTRAL_PATH, handle)
