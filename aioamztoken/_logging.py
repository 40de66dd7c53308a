"""Loggers and a redacting filter. No log record of ours ever holds a secret."""

from __future__ import annotations

import logging
import re

__all__ = ["RedactingFilter", "audit_logger", "logger"]

#: The library's logger. Child loggers: ``aioamztoken.audit`` (one INFO line per refresh,
#: code exchange and re-authorization event) and ``aioamztoken.http`` (DEBUG: endpoint
#: statuses and retry decisions).
logger = logging.getLogger("aioamztoken")
audit_logger = logging.getLogger("aioamztoken.audit")
http_logger = logging.getLogger("aioamztoken.http")

_REDACTED = "[redacted]"

# Shapes of LwA secrets: access tokens (Atza|), refresh tokens (Atzr|), authorization
# codes, bearer headers, and secrets in url-encoded forms or JSON.
_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"Atz[a-zA-Z](?:\||%7[cC])[^\s\"',;&}]+"),
    re.compile(r"(?i)(bearer\s+)[^\s\"',;]+"),
    re.compile(
        r"(?i)((?:access_token|refresh_token|client_secret|code_verifier|"
        r"authorization)[\"']?\s*[=:]\s*[\"']?)[^\s\"',;&}]+"
    ),
    # An authorization code travels as a query or form parameter: ?code=… or &code=…
    # (SP-API: spapi_oauth_code=…), and so does a consent state of aioamztoken.web.
    re.compile(r"([?&](?:spapi_oauth_)?code=)[^\s\"',;&#]+"),
    re.compile(r"([?&]state=)s1\.[^\s\"',;&#]+"),
    re.compile(r"amzn1\.oa2-cs\.v1\.[0-9a-f]+"),
)


def redact(text: str) -> str:
    """``text`` with anything shaped like an LwA secret replaced by ``[redacted]``."""
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

    It masks access and refresh tokens (``Atza|…``, ``Atzr|…``), ``Bearer …`` values,
    ``client_secret=…``/``code=…``-style pairs, LwA client secrets, and any extra
    strings given as ``secrets``. It rewrites the record's message in place and never
    drops a record. Thread-safe.
    """

    def __init__(self, secrets: list[str] | tuple[str, ...] = (), name: str = "") -> None:
        super().__init__(name)
        self._secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is the caller's problem, not ours
            return True
        cleaned = redact(message)
        for secret in self._secrets:
            cleaned = cleaned.replace(secret, _REDACTED)
        if cleaned != message or record.args:
            record.msg = cleaned
            record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True
