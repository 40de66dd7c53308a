"""Server-rendered HTML of the consent app: plain, accessible, with no external asset.

Every value is HTML-escaped here; callers pass plain text. Links are relative, so the
pages work under whatever prefix the app is mounted at.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from urllib.parse import urlencode

__all__ = ["AccountRow", "accounts_page", "error_page", "page", "start_page", "success_page"]

_STYLE = """
:root { color-scheme: light; }
body { font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       margin: 0; padding: 0 1.5rem; background: #f6f7f9; color: #1b1f24; }
main { max-width: 72rem; margin: 3rem auto; padding: 2rem; background: #fff;
       border: 1px solid #d0d7de; border-radius: 8px; }
h1 { font-size: 1.6rem; margin-top: 0; }
p.lead { font-size: 1.1rem; }
.ok { border-left: 6px solid #1a7f37; padding-left: 1rem; }
.problem { border-left: 6px solid #cf222e; padding-left: 1rem; }
label { display: block; font-weight: 600; margin-bottom: .25rem; }
input[type=text] { font: inherit; padding: .5rem; width: 100%; max-width: 24rem;
                   border: 1px solid #57606a; border-radius: 6px; }
button, a.button { font: inherit; font-weight: 600; display: inline-block; margin-top: 1rem;
                   padding: .6rem 1.4rem; border-radius: 6px; border: 1px solid #1f6feb;
                   background: #0969da; color: #fff; text-decoration: none; cursor: pointer; }
button:focus-visible, a:focus-visible, input:focus-visible {
    outline: 3px solid #bf8700; outline-offset: 2px; }
a { color: #0550ae; }
table { border-collapse: collapse; width: 100%; margin-top: 1rem; }
caption { text-align: left; font-weight: 600; padding-bottom: .5rem; }
th, td { text-align: left; padding: .5rem; border-bottom: 1px solid #d0d7de;
         vertical-align: top; }
th { background: #f6f8fa; }
th[scope=row] { white-space: nowrap; }
td code { font-size: .85rem; word-break: break-all; }
.state-fresh { color: #1a7f37; } .state-needs-reauth, .state-unreadable { color: #cf222e; }
.muted { color: #57606a; }
"""


def page(title: str, body: str) -> str:
    """A whole HTML document around ``body`` (already HTML)."""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="referrer" content="no-referrer">\n'
        f"<title>{escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n"
        f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


def start_page(*, api_name: str, account_id: str | None, account_required: bool) -> str:
    """The page with the "Connect" button: a GET form to ``connect``."""
    if account_id:
        field = f'<input type="hidden" name="account" value="{escape(account_id)}">'
        intro = (
            f'<p class="lead">Connect the account <strong>{escape(account_id)}</strong> '
            f"to this application. You will sign in at Amazon and approve access to your "
            f"{escape(api_name)} data; Amazon then sends you back here.</p>"
        )
    else:
        required = " required" if account_required else ""
        hint = "" if account_required else " (optional: by default your seller id is used)"
        field = (
            f'<label for="account">Account name{escape(hint)}</label>\n'
            f'<input type="text" id="account" name="account" autocomplete="off"{required}>'
        )
        intro = (
            f'<p class="lead">Connect your {escape(api_name)} account to this application. '
            "You will sign in at Amazon and approve access; Amazon then sends you back "
            "here.</p>"
        )
    body = (
        f"<h1>Connect your {escape(api_name)} account</h1>\n{intro}\n"
        f'<form method="get" action="connect">\n{field}\n'
        '<button type="submit">Connect</button>\n</form>'
    )
    return page(f"Connect your {api_name} account", body)


def success_page(*, account_id: str, api_name: str) -> str:
    """Shown after the account was authorized and saved."""
    body = (
        '<div class="ok" role="status">\n<h1>Account connected</h1>\n'
        f'<p class="lead">The account <strong>{escape(account_id)}</strong> is now '
        f"connected: this application may use its {escape(api_name)} data.</p>\n"
        "<p>You can close this window.</p>\n</div>"
    )
    return page("Account connected", body)


def error_page(*, title: str, message: str, account_id: str | None = None) -> str:
    """A failure: what happened in words, and a link to start again. Holds no secret."""
    again = "./" if account_id is None else "./?" + urlencode({"account": account_id})
    body = (
        f'<div class="problem" role="alert">\n<h1>{escape(title)}</h1>\n'
        f'<p class="lead">{escape(message)}</p>\n'
        "<p>Nothing was saved.</p>\n</div>\n"
        f'<p><a href="{escape(again)}">Start again</a></p>'
    )
    return page(title, body)


def forbidden_page() -> str:
    """The operator page, refused."""
    body = (
        '<div class="problem" role="alert">\n<h1>Not allowed</h1>\n'
        '<p class="lead">You may not see the list of accounts.</p>\n</div>'
    )
    return page("Not allowed", body)


@dataclass(frozen=True, slots=True)
class AccountRow:
    """One line of the operator page (plain text, escaped when rendered)."""

    account_id: str
    state: str
    expires_at: float | None
    last_error: str | None
    authorized_at: float | None
    reauth_due_at: float | None
    reauthorize_url: str
    #: Where the link on the page goes (default ``reauthorize_url``, which is shown to copy).
    reauthorize_href: str | None = None


def _when(timestamp: float) -> str:
    moment = time.gmtime(timestamp)
    machine = time.strftime("%Y-%m-%dT%H:%M:%SZ", moment)
    return f'<time datetime="{machine}">{time.strftime("%Y-%m-%d %H:%M UTC", moment)}</time>'


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds >= 86400:
        return f"{seconds // 86400} days"
    if seconds >= 3600:
        return f"{seconds // 3600} hours"
    if seconds >= 60:
        return f"{seconds // 60} minutes"
    return f"{seconds} seconds"


def _clip(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _ago(seconds: float) -> str:
    return "just now" if seconds < 60 else f"{_age(seconds)} ago"


def accounts_page(rows: Sequence[AccountRow], *, api_name: str, now: float | None = None) -> str:
    """The operator page: one row per account, each with a copyable re-authorize link."""
    now = time.time() if now is None else now
    lines = []
    for row in rows:
        if row.expires_at is None:
            expiry = '<span class="muted">no access token yet</span>'
        else:
            left = row.expires_at - now
            relative = f"in {_age(left)}" if left > 0 else _ago(-left)
            expiry = f"{_when(row.expires_at)} ({relative})"
        if row.authorized_at is None:
            authorized = '<span class="muted">unknown</span>'
        else:
            authorized = f"{_ago(now - row.authorized_at)} ({_when(row.authorized_at)})"
        if row.reauth_due_at is not None:
            authorized += f"<br>re-authorize by {_when(row.reauth_due_at)}"
        error = (
            '<span class="muted">none</span>'
            if row.last_error is None
            else escape(_clip(row.last_error))
        )
        link = escape(row.reauthorize_url)
        href = escape(row.reauthorize_href or row.reauthorize_url)
        lines.append(
            "<tr>\n"
            f'<th scope="row">{escape(row.account_id)}</th>\n'
            f'<td class="state-{escape(row.state)}">{escape(row.state)}</td>\n'
            f"<td>{expiry}</td>\n<td>{error}</td>\n<td>{authorized}</td>\n"
            f'<td><a href="{href}" aria-label="re-authorize {escape(row.account_id)}">'
            f"re-authorize</a><br><code>{link}</code></td>\n"
            "</tr>"
        )
    if lines:
        table = (
            f"<table>\n<caption>{len(rows)} account{'s' if len(rows) != 1 else ''}</caption>\n"
            '<thead>\n<tr><th scope="col">Account</th><th scope="col">State</th>'
            '<th scope="col">Access token expires</th><th scope="col">Last error</th>'
            '<th scope="col">Authorized</th><th scope="col">Re-authorize link</th></tr>\n'
            "</thead>\n<tbody>\n" + "\n".join(lines) + "\n</tbody>\n</table>"
        )
    else:
        table = '<p class="lead">No accounts yet.</p>'
    body = (
        f"<h1>{escape(api_name)} accounts</h1>\n"
        "<p>Send a customer the re-authorize link of their account to have them "
        "authorize it again.</p>\n" + table
    )
    return page(f"{api_name} accounts", body)
