"""The sans-io signing policy, table-driven: no sockets, no event loop."""

from __future__ import annotations

import io
import json

import pytest

from aioamztoken._signing import (
    SP_API_ORIGINS,
    OriginSet,
    RejectionGuard,
    SigningPolicy,
    Verdict,
    body_replayable,
    decide,
    normalize_origin,
    sp_api_token_rejected,
)

CLIENT = "amzn1.application-oa2-client.x"


def sp_body(details: str, message: str = "Access to requested resource is denied.") -> bytes:
    return json.dumps(
        {"errors": [{"code": "Unauthorized", "message": message, "details": details}]}
    ).encode()


@pytest.mark.parametrize(
    ("origin", "expected"),
    [
        ("https://advertising-api.amazon.com", ("https", "advertising-api.amazon.com")),
        ("HTTPS://Advertising-API.amazon.com:443/", ("https", "advertising-api.amazon.com")),
        ("http://127.0.0.1:8080", ("http", "127.0.0.1:8080")),
        ("http://127.0.0.1:80", ("http", "127.0.0.1")),
        ("http://[::1]:9000", ("http", "[::1]:9000")),
        ("https://bücher.example", ("https", "xn--bcher-kva.example")),
    ],
)
def test_origins_are_normalized(origin: str, expected: tuple[str, str]) -> None:
    assert normalize_origin(origin) == expected


@pytest.mark.parametrize(
    "origin",
    [
        "https://advertising-api.amazon.com/v2",
        "https://advertising-api.amazon.com?x=1",
        "https://advertising-api.amazon.com#f",
        "https://user:pw@advertising-api.amazon.com",
        "advertising-api.amazon.com",
        "ftp://advertising-api.amazon.com",
        "https://host:notaport",
        "",
    ],
)
def test_anything_but_a_bare_origin_is_refused(origin: str) -> None:
    with pytest.raises(ValueError, match="not an origin"):
        normalize_origin(origin)


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://sellingpartnerapi-na.amazon.com/orders/v0/orders", True),
        ("https://SELLINGPARTNERAPI-EU.amazon.com:443/x?y=1", True),
        ("https://sandbox.sellingpartnerapi-fe.amazon.com/", True),
        ("http://sellingpartnerapi-na.amazon.com/orders", False),
        ("https://sellingpartnerapi-na.amazon.com:8443/orders", False),
        ("https://sellingpartnerapi-na.amazon.com.evil.example/", False),
        ("https://x@sellingpartnerapi-na.amazon.com/", False),
        ("https://tortuga-prod-na.s3.amazonaws.com/doc?X-Amz-Signature=s", False),
        ("https://advertising-api.amazon.com/v2/profiles", False),
        ("https://[bad", False),
        ("not a url", False),
    ],
)
def test_sp_api_origins(url: str, allowed: bool) -> None:
    assert OriginSet(SP_API_ORIGINS).allows_url(url) is allowed


def test_origins_must_be_a_list_not_one_origin() -> None:
    with pytest.raises(TypeError):
        OriginSet("https://advertising-api.amazon.com")
    assert list(OriginSet(["https://b.example", "http://a.example:81"])) == [
        "http://a.example:81",
        "https://b.example",
    ]


@pytest.mark.parametrize(
    ("body", "rejected"),
    [
        (sp_body("The access token you provided has expired."), True),
        (sp_body("The access token you provided is revoked, malformed or invalid."), True),
        (sp_body("", message="The access token you provided has expired."), True),
        (sp_body(""), False),  # a missing role
        (sp_body("The resource is denied for this seller."), False),
        (sp_body("Access token is missing in the request header."), False),
        (b'{"errors": "nope"}', False),
        (b'{"errors": [1, "x", null]}', False),
        (b"[1, 2]", False),
        (b"<html>403 Forbidden</html>", False),
        (b"\xff\xfe", False),
        (b"", False),
        (None, False),
        (b'{"errors": [{"details": "' + b"access token expired " * 5000 + b'"}]}', False),
    ],
)
def test_which_sp_api_403_bodies_mean_a_rejected_token(body: bytes | None, rejected: bool) -> None:
    assert sp_api_token_rejected(body) is rejected


@pytest.mark.parametrize(
    ("api", "status", "body", "rejected"),
    [
        ("ads", 401, None, True),
        ("ads", 403, sp_body("The access token you provided has expired."), False),
        ("ads", 200, None, False),
        ("sp-api", 401, None, True),
        ("sp-api", 403, sp_body("The access token you provided has expired."), True),
        ("sp-api", 403, sp_body(""), False),
        ("sp-api", 400, sp_body("The access token you provided has expired."), False),
        ("sp-api", 200, None, False),
    ],
)
def test_what_a_rejection_is_per_family(
    api: str, status: int, body: bytes | None, rejected: bool
) -> None:
    assert SigningPolicy(api, CLIENT).is_rejection(status, body) is rejected


@pytest.mark.parametrize(
    ("api", "options", "path", "token_header", "token_value", "headers"),
    [
        (
            "ads",
            {},
            "/v2/profiles",
            "Authorization",
            "Bearer T",
            {"Amazon-Advertising-API-ClientId": CLIENT},
        ),
        (
            "ads",
            {"profile_id": 42, "ads_account_id": "amzn1.ads-account.g.1"},
            "/sp/campaigns/list",
            "Authorization",
            "Bearer T",
            {
                "Amazon-Advertising-API-ClientId": CLIENT,
                "Amazon-Advertising-API-Scope": "42",
                "Amazon-Ads-AccountId": "amzn1.ads-account.g.1",
            },
        ),
        (
            "ads",
            {"ads_account_id": "A1", "manager_account_id": "M1"},
            "/adsApi/v1/query/campaigns",
            "Authorization",
            "Bearer T",
            {
                "Amazon-Advertising-API-ClientId": CLIENT,
                "Amazon-Ads-ClientId": CLIENT,
                "Amazon-Ads-AccountId": "A1",
                "Amazon-Ads-Manager-AccountId": "M1",
            },
        ),
        ("sp-api", {}, "/orders/v0/orders", "x-amz-access-token", "T", {}),
        ("sp-api", {}, "/adsApi/v1/x", "x-amz-access-token", "T", {}),
    ],
)
def test_headers_per_family_and_path(
    api: str,
    options: dict[str, object],
    path: str,
    token_header: str,
    token_value: str,
    headers: dict[str, str],
) -> None:
    policy = SigningPolicy(api, CLIENT, **options)  # type: ignore[arg-type]
    assert policy.token_header == token_header
    assert policy.token_value("T") == token_value
    assert policy.token_value("T") is policy.token_value("T")
    assert dict(policy.headers(path)) == headers
    assert set(headers) | {token_header} <= set(policy.header_names())


def test_only_sp_api_leaves_a_request_with_its_own_token_alone() -> None:
    assert SigningPolicy("sp-api", CLIENT).leaves_alone(True)
    assert not SigningPolicy("sp-api", CLIENT).leaves_alone(False)
    assert not SigningPolicy("ads", CLIENT).leaves_alone(True)


@pytest.mark.parametrize(
    ("api", "options", "error"),
    [
        ("mws", {}, ValueError),
        ("sp-api", {"profile_id": 1}, ValueError),
        ("sp-api", {"ads_account_id": "A"}, ValueError),
        ("ads", {"profile_id": " "}, ValueError),
        ("ads", {"manager_account_id": "M\r\nX-Evil: 1"}, ValueError),
        ("ads", {"origins": "https://advertising-api.amazon.com"}, TypeError),
    ],
)
def test_bad_configurations_are_refused(
    api: str, options: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        SigningPolicy(api, CLIENT, **options)  # type: ignore[arg-type]


class _Unseekable(io.RawIOBase):
    def seekable(self) -> bool:
        return False


@pytest.mark.parametrize(
    ("body", "replayable"),
    [
        (None, True),
        (b"x", True),
        ("x", True),
        (bytearray(b"x"), True),
        (io.BytesIO(b"x"), True),
        (_Unseekable(), False),
        (iter([b"x"]), False),
        ((b for b in [b"x"]), False),
        (object(), False),
    ],
)
def test_which_bodies_may_be_replayed(body: object, replayable: bool) -> None:
    assert body_replayable(body) is replayable


def test_closed_files_are_not_replayable() -> None:
    f = io.BytesIO(b"x")
    f.close()
    assert not body_replayable(f)


ADS = SigningPolicy("ads", CLIENT)
SP = SigningPolicy("sp-api", CLIENT)
EXPIRED = sp_body("The access token you provided has expired.")


@pytest.mark.parametrize(
    ("policy", "status", "body", "retried", "replayable", "uncured", "verdict"),
    [
        (ADS, 200, None, False, True, None, Verdict.RETURN),
        (ADS, 401, None, False, True, None, Verdict.RETRY),
        (ADS, 401, None, False, False, None, Verdict.NOT_REPLAYABLE),
        (ADS, 401, None, False, True, "T", Verdict.UNCURED),
        (ADS, 401, None, False, True, "OTHER", Verdict.RETRY),
        (ADS, 401, None, True, True, None, Verdict.RETURN),
        (ADS, 500, None, False, True, None, Verdict.RETURN),
        (SP, 403, EXPIRED, False, True, None, Verdict.RETRY),
        (SP, 403, sp_body(""), False, True, None, Verdict.RETURN),
        (SP, 403, EXPIRED, True, True, None, Verdict.RETURN),
        (SP, 403, EXPIRED, False, True, "T", Verdict.UNCURED),
    ],
)
def test_the_decision_after_each_send(
    policy: SigningPolicy,
    status: int,
    body: bytes | None,
    retried: bool,
    replayable: bool,
    uncured: str | None,
    verdict: Verdict,
) -> None:
    guard = RejectionGuard(cooldown=60)
    if uncured is not None:
        guard.uncured(uncured, now=100.0)
    got = decide(
        policy,
        guard,
        status=status,
        body=body,
        token="T",
        retried=retried,
        replayable=replayable,
        now=110.0,
    )
    assert got is verdict


def test_a_rejected_retry_marks_its_token_uncured_for_the_cooldown_only() -> None:
    guard = RejectionGuard(cooldown=30)
    kwargs = {"body": None, "replayable": True}
    assert decide(ADS, guard, status=401, token="T1", retried=True, now=0.0, **kwargs) is (
        Verdict.RETURN
    )
    assert not guard.may_refresh("T1", 29.0)
    assert guard.may_refresh("T2", 29.0)  # a newer token is never blocked
    assert decide(ADS, guard, status=401, token="T1", retried=False, now=10.0, **kwargs) is (
        Verdict.UNCURED
    )
    assert decide(ADS, guard, status=401, token="T1", retried=False, now=30.0, **kwargs) is (
        Verdict.RETRY
    )
    # A retry that succeeds records nothing.
    fresh = RejectionGuard()
    decide(ADS, fresh, status=200, token="T", retried=True, now=0.0, **kwargs)
    assert fresh.may_refresh("T", 1.0)


def test_reprs_name_the_policy_not_a_token() -> None:
    policy = SigningPolicy("sp-api", CLIENT)
    policy.token_value("Atza|secret")
    assert "sp-api" in repr(policy)
    assert "Atza|" not in repr(policy)
    assert "sellingpartnerapi-na" in repr(policy.origins)
    assert "60" in repr(RejectionGuard())


def test_urls_with_credentials_or_bad_ports_are_never_allowed() -> None:
    origins = OriginSet(["https://advertising-api.amazon.com", "http://[::1]:8080"])
    assert not origins.allows_url("https://user@advertising-api.amazon.com/v2/profiles")
    assert not origins.allows_url("https://advertising-api.amazon.com:99999/")
    assert origins.allows_url("http://[::1]:8080/x")
    assert origins.allows("http", "[::1]:8080")
    assert not origins.allows("https", "[::1]:8080")


class _Broken(io.RawIOBase):
    def seekable(self) -> bool:
        raise OSError("gone")


def test_a_file_whose_seekability_cannot_be_told_is_not_replayed() -> None:
    assert not body_replayable(_Broken())
