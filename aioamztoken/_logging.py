"""Loggers and a redacting filter. No log record of ours ever holds a secret."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

__all__ = ["RedactingFilter", "audit_logger", "logger"]

#: The library's logger. Child loggers: ``aioamztoken.audit`` (one INFO line per refresh,
#: code exchange and re-authorization event) and ``aioamztoken.http`` (DEBUG: endpoint
#: statuses and retry decisions).
logger = logging.getLogger("aioamztoken")
audit_logger = logging.getLogger("aioamztoken.audit")
http_logger = logging.getLogger("aioamztoken.http")

_REDACTED = "[redacted]"

# Shapes of LwA secrets: access tokens (Atza|), refresh tokens (Atzr|), authorization
# codes, bearer and basic credentials, and secrets in url-encoded forms, URLs, headers and
# JSON. A name may be spelt with "_" or "-" (form fields, headers) and quoted (JSON, reprs).
_SECRET_NAMES = (
    r"access[_-]token|refresh[_-]token|client[_-]secret|code[_-]verifier|id[_-]token|"
    r"x-amz-access-token|password|authorization"
)
_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"Atz[a-zA-Z](?:\||%7[cC])[^\s\"',;&}\]]+"),
    re.compile(r"(?i)(\bbearer\s+)(?!\[redacted\])[^\s\"',;]+"),
    # HTTP Basic client authentication: base64 of "client_id:client_secret", not prose.
    re.compile(r"((?i:\bbasic)\s+)(?=\S*[A-Z])(?=\S*[a-z0-9])[A-Za-z0-9+/]{20,}={0,2}"),
    re.compile(
        rf"(?i)((?<![\w-])(?:{_SECRET_NAMES})[\"']?\s*[=:]\s*[\"']?"
        r"(?!(?:(?:bearer|basic)\s+)?\[redacted\])(?:(?:bearer|basic)\s+)?)[^\s\"',;&}\]]+"
    ),
    # An authorization code: a form field or query parameter (code=…, first or not), or a
    # JSON member or Python dict item ("code": "…"). "error_code=" and "status code: 400"
    # are left alone.
    re.compile(r"((?<![\w.-])code=)[^\s\"',;&#]+"),
    re.compile(r"(?i)([\"']code[\"']\s*:\s*[\"'])[^\"']+"),
    # SP-API's code (spapi_oauth_code=…), and a consent state of aioamztoken.web.
    re.compile(r"((?<![\w.-])spapi_oauth_code=)[^\s\"',;&#]+"),
    re.compile(r"((?<![\w.-])state=)s1\.[^\s\"',;&#]+"),
    re.compile(r"amzn1\.oa2-cs\.v1\.[0-9a-f]+"),
)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with anything shaped like an LwA secret, and each of ``secrets``, replaced
    by ``[redacted]``."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, _REDACTED)
    for pattern in _PATTERNS:
        if pattern.groups:
            text = pattern.sub(lambda m: m.group(1) + _REDACTED, text)
        else:
            text = pattern.sub(_REDACTED, text)
    return text


class RedactingFilter(logging.Filter):
    """A :class:`logging.Filter` that masks LwA secrets in any record passing through it.

    aioamztoken never logs a secret; attach this to your own handlers for tokens that
    reach your logs from elsewhere (an HTTP client's debug output, say)::

        handler.addFilter(aioamztoken.RedactingFilter())

    It masks access and refresh tokens (``Atza|…``, ``Atzr|…``), ``Bearer …`` and
    ``Basic …`` credentials, secrets in url-encoded forms and URLs (``code=…`` and
    ``refresh_token=…`` whether first or not), in headers (``Authorization``,
    ``x-amz-access-token``) and in JSON (``"refresh_token": "…"``, ``"code": "…"``), LwA
    client secrets, and any extra strings given as ``secrets``. It rewrites the record's
    message in place and never drops a record. Thread-safe.
    """

    def __init__(self, secrets: list[str] | tuple[str, ...] = (), name: str = "") -> None:
        super().__init__(name)
        self._secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is the caller's problem, not ours
            return True
        cleaned = redact(message, self._secrets)
        if cleaned != message or record.args:
            record.msg = cleaned
            record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(
                logging.Formatter().formatException(record.exc_info), self._secrets
            )
        elif record.exc_text:
            record.exc_text = redact(record.exc_text, self._secrets)
        return True
