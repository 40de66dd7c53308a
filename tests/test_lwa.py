"""The LwA protocol without I/O: table-driven, no sockets, no event loop."""

from __future__ import annotations

import base64
import hashlib
from urllib.parse import parse_qs, urlsplit

import pytest

from aioamztoken._errors import (
    InvalidClientError,
    InvalidGrantError,
    TokenEndpointError,
    TokenRefreshError,
)
from aioamztoken._lwa import (
    authorization_url,
    code_request,
    make_pkce_pair,
    parse_retry_after,
    parse_token_response,
    refresh_request,
)
from aioamztoken._models import Region, Token

SENT = 1_000_000.0


def ok(expires_in: object = 3600, refresh: str | None = "Atzr|new") -> bytes:
    import json

    body: dict[str, object] = {"access_token": "Atza|abc", "token_type": "bearer"}
    if expires_in is not None:
        body["expires_in"] = expires_in
    if refresh is not None:
        body["refresh_token"] = refresh
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("expires_in", "lifetime"),
    [(3600, 3600.0), ("3600", 3600.0), (" 1800 ", 1800.0), (59.5, 59.5), (None, 3600.0)],
)
def test_expires_in_as_number_or_string_sets_expiry_from_send_time(
    expires_in: object, lifetime: float
) -> None:
    token = parse_token_response(200, ok(expires_in), sent_at=SENT)
    assert token.expires_at == SENT + lifetime
    assert token.access_token == "Atza|abc"
    assert token.refresh_token == "Atzr|new"


@pytest.mark.parametrize("expires_in", ["soon", "", -5, 0, True, "nan", "inf", [1]])
def test_unusable_expires_in_is_a_typed_endpoint_error(expires_in: object) -> None:
    with pytest.raises(TokenEndpointError, match="expires_in"):
        parse_token_response(200, ok(expires_in), sent_at=SENT)


def test_missing_refresh_token_keeps_the_previous_one() -> None:
    token = parse_token_response(
        200, ok(refresh=None), sent_at=SENT, previous_refresh_token="Atzr|old"
    )
    assert token.refresh_token == "Atzr|old"


def test_returned_refresh_token_replaces_the_previous_one() -> None:
    token = parse_token_response(200, ok(), sent_at=SENT, previous_refresh_token="Atzr|old")
    assert token.refresh_token == "Atzr|new"


ERRORS = [
    # status, body, content type, expected type, expected .error
    (
        400,
        b'{"error":"invalid_grant","error_description":"The request has an invalid grant parameter : refresh_token"}',
        "application/json",
        InvalidGrantError,
        "invalid_grant",
    ),
    (
        401,
        b'{"error":"invalid_client","error_description":"Client authentication failed"}',
        "application/json",
        InvalidClientError,
        "invalid_client",
    ),
    (400, b'{"error":"invalid_client"}', "application/json", InvalidClientError, "invalid_client"),
    (401, b"", None, InvalidClientError, "invalid_client"),
    (
        400,
        b'{"error":"invalid_request","error_description":"missing code"}',
        "application/json",
        TokenRefreshError,
        "invalid_request",
    ),
    (
        400,
        b'{"error":"unsupported_grant_type"}',
        "application/json",
        TokenRefreshError,
        "unsupported_grant_type",
    ),
    (
        400,
        b'{"error":"unauthorized_client"}',
        "application/json",
        TokenRefreshError,
        "unauthorized_client",
    ),
    (400, b'{"error":"invalid_scope"}', "application/json", TokenRefreshError, "invalid_scope"),
    (403, b"<html>Forbidden</html>", "text/html", TokenRefreshError, None),
]


@pytest.mark.parametrize(("status", "body", "ctype", "kind", "error"), ERRORS)
def test_refusals_map_to_typed_errors(
    status: int, body: bytes, ctype: str | None, kind: type[Exception], error: str | None
) -> None:
    with pytest.raises(kind) as info:
        parse_token_response(status, body, sent_at=SENT, content_type=ctype)
    assert type(info.value) is kind
    assert isinstance(info.value, TokenRefreshError)
    assert info.value.error == error
    assert info.value.status == status


TRANSIENT = [
    (500, b'{"error":"server_error"}', "application/json", None),
    (502, b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html", None),
    (503, b'{"error":"temporarily_unavailable"}', "application/json", "7"),
    (504, b"", None, None),
    (429, b"", None, "12"),
    (429, b"Too Many Requests", "text/plain", None),
    (200, b"<html>captive portal</html>", "text/html", None),
    (200, b'{"token_type":"bearer"}', "application/json", None),
    (200, b"[1,2]", "application/json", None),
    (200, b"\xff\xfe", None, None),
]


@pytest.mark.parametrize(("status", "body", "ctype", "retry_after"), TRANSIENT)
def test_transient_answers_are_endpoint_errors_with_status_and_retry_after(
    status: int, body: bytes, ctype: str | None, retry_after: str | None
) -> None:
    with pytest.raises(TokenEndpointError) as info:
        parse_token_response(
            status, body, sent_at=SENT, content_type=ctype, retry_after=retry_after
        )
    assert info.value.status == status
    assert info.value.retry_after == (float(retry_after) if retry_after else None)


def test_html_error_message_describes_the_body_without_quoting_it() -> None:
    body = b"<html>secret-ish page Atza|leak</html>"
    with pytest.raises(TokenEndpointError) as info:
        parse_token_response(502, body, sent_at=SENT, content_type="text/html; charset=utf-8")
    assert "Atza|leak" not in str(info.value)
    assert "text/html" in str(info.value)


def test_long_error_description_is_clipped() -> None:
    body = ('{"error":"invalid_request","error_description":"' + "x" * 5000 + '"}').encode()
    with pytest.raises(TokenRefreshError) as info:
        parse_token_response(400, body, sent_at=SENT)
    assert len(str(info.value)) < 400


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("5", 5.0),
        ("0", 0.0),
        ("-3", 0.0),
        ("2.5", 2.5),
        (None, None),
        ("", None),
        ("soon", None),
        ("nan", None),
    ],
)
def test_retry_after_seconds(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value) == seconds


def test_retry_after_http_date() -> None:
    assert parse_retry_after("Thu, 01 Jan 1970 00:00:30 GMT", now=10.0) == 20.0


def test_refresh_request_form() -> None:
    req = refresh_request("https://t/", "cid", "csecret", "Atzr|r")
    assert parse_qs(req.body.decode()) == {
        "grant_type": ["refresh_token"],
        "refresh_token": ["Atzr|r"],
        "client_id": ["cid"],
        "client_secret": ["csecret"],
    }
    assert "csecret" not in repr(req)
    assert "Atzr" not in repr(req)


def test_code_request_form_with_and_without_pkce() -> None:
    plain = parse_qs(code_request("u", "cid", "cs", "ANcode", "https://r/cb").body.decode())
    assert plain["grant_type"] == ["authorization_code"]
    assert plain["code"] == ["ANcode"]
    assert plain["redirect_uri"] == ["https://r/cb"]
    assert "code_verifier" not in plain
    pkce = parse_qs(
        code_request("u", "cid", "cs", "ANcode", "https://r/cb", "v" * 50).body.decode()
    )
    assert pkce["code_verifier"] == ["v" * 50]


@pytest.mark.parametrize(
    ("region", "host"),
    [
        (Region.NA, "www.amazon.com"),
        (Region.EU, "eu.account.amazon.com"),
        (Region.FE, "apac.account.amazon.com"),
    ],
)
def test_consent_url_uses_the_region_host_and_carries_every_parameter(
    region: Region, host: str
) -> None:
    url = authorization_url(
        region, "cid", redirect_uri="https://app/cb", state="s1", code_challenge="ch"
    )
    parts = urlsplit(url)
    assert parts.scheme == "https"
    assert parts.netloc == host
    assert parts.path == "/ap/oa"
    assert parse_qs(parts.query) == {
        "client_id": ["cid"],
        "scope": ["advertising::campaign_management"],
        "response_type": ["code"],
        "redirect_uri": ["https://app/cb"],
        "state": ["s1"],
        "code_challenge": ["ch"],
        "code_challenge_method": ["S256"],
    }


def test_consent_url_refuses_an_empty_state() -> None:
    with pytest.raises(ValueError, match="state"):
        authorization_url(Region.NA, "cid", redirect_uri="https://app/cb", state="")


def test_pkce_pair_is_s256_and_unique() -> None:
    verifier, challenge = make_pkce_pair()
    assert 43 <= len(verifier) <= 128
    expected = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    assert challenge == expected.decode()
    assert make_pkce_pair()[0] != verifier


def test_regions_know_their_urls() -> None:
    assert Region.parse("EU").token_url == "https://api.amazon.co.uk/auth/o2/token"
    assert Region.FE.token_url == "https://api.amazon.co.jp/auth/o2/token"
    assert Region.NA.api_host == "https://advertising-api.amazon.com"
    assert Region.parse(Region.FE) is Region.FE
    assert str(Region.NA) == "na"
    with pytest.raises(ValueError, match="unknown region"):
        Region.parse("us")


def test_token_repr_and_str_hide_both_tokens() -> None:
    token = Token("Atza|secret-access", "Atzr|secret-refresh", 123.0)
    for text in (repr(token), str(token)):
        assert "secret" not in text
        assert "123.0" in text


def test_token_is_frozen() -> None:
    token = Token("a", "r", 1.0)
    with pytest.raises(AttributeError):
        token.access_token = "b"  # type: ignore[misc]


@pytest.mark.parametrize(
    "record",
    [
        None,
        [],
        {"access_token": "a", "refresh_token": "r"},
        {"access_token": "a", "refresh_token": "r", "expires_at": "1"},
        {"access_token": "a", "refresh_token": "r", "expires_at": True},
        {"access_token": "a", "refresh_token": "r", "expires_at": float("nan")},
        {"access_token": "a", "refresh_token": "", "expires_at": 1},
        {"access_token": 1, "refresh_token": "r", "expires_at": 1},
        {"access_token": "a", "refresh_token": "r", "expires_at": 1, "scope": 5},
    ],
)
def test_token_from_bad_records_raises_value_error(record: object) -> None:
    with pytest.raises(ValueError):
        Token.from_dict(record)


def test_token_roundtrip_through_dict() -> None:
    token = Token("a", "r", 12.5, "bearer", "advertising::campaign_management")
    assert Token.from_dict(token.to_dict()) == token
    assert token.is_expired(now=13.0)
    assert not token.is_expired(now=12.0)
    assert Token("", "r", 1e12).is_expired()
