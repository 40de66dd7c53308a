"""OpenTelemetry: the metrics and spans of refreshes, code exchanges and token requests.

Read back with the real SDK (an in-memory metric reader, an in-memory span exporter),
against the emulator.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    MeterProvider,
    ObservableGauge,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import aioamztoken as at
from aioamztoken.testing import AmazonEmulator

from .conftest import ManagerFactory

ROOT = Path(__file__).resolve().parent.parent
ACCOUNT = "amzn1.account.telemetry"
DELTA = {
    Counter: AggregationTemporality.DELTA,
    UpDownCounter: AggregationTemporality.DELTA,
    Histogram: AggregationTemporality.DELTA,
    ObservableGauge: AggregationTemporality.DELTA,
}


@dataclass
class Otel:
    """An SDK meter provider and tracer provider, read in memory."""

    reader: InMemoryMetricReader
    exporter: InMemorySpanExporter
    meter_provider: MeterProvider
    tracer_provider: TracerProvider

    def options(self) -> dict[str, Any]:
        return {"meter_provider": self.meter_provider, "tracer_provider": self.tracer_provider}

    def collect(self) -> dict[str, list[tuple[dict[str, Any], Any]]]:
        """Every data point now, by metric name: (attributes, value or histogram count)."""
        found: dict[str, list[tuple[dict[str, Any], Any]]] = {}
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        value = getattr(point, "value", None)
                        if value is None:
                            value = point.count  # a histogram
                        found.setdefault(metric.name, []).append((dict(point.attributes), value))
        return found

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if name is None or s.name == name]


def make_otel(*, delta: bool = False) -> Otel:
    reader = InMemoryMetricReader(preferred_temporality=DELTA if delta else None)
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Otel(reader, exporter, MeterProvider(metric_readers=[reader]), tracer_provider)


@pytest.fixture
def otel() -> Iterator[Otel]:
    made = make_otel()
    yield made
    made.meter_provider.shutdown()
    made.tracer_provider.shutdown()


@pytest.fixture
def otel_delta() -> Iterator[Otel]:
    made = make_otel(delta=True)
    yield made
    made.meter_provider.shutdown()
    made.tracer_provider.shutdown()


def total(points: dict[str, list[tuple[dict[str, Any], Any]]], name: str, **attrs: Any) -> Any:
    return sum(v for a, v in points.get(name, []) if all(a.get(k) == x for k, x in attrs.items()))


def gauge_of(points: dict[str, list[tuple[dict[str, Any], Any]]]) -> dict[str, int]:
    return {a["state"]: v for a, v in points["aioamztoken.accounts"]}


async def test_one_refresh_counts_one_ok_refresh_and_makes_one_span_with_an_http_child(
    make_manager: ManagerFactory, emulator: AmazonEmulator, otel: Otel
) -> None:
    mgr = make_manager(**otel.options())
    await mgr.add_account(ACCOUNT, emulator.issue_refresh_token(ACCOUNT))
    await mgr.get_access_token(ACCOUNT)
    points = otel.collect()
    assert points["aioamztoken.refreshes"] == [({"outcome": "ok", "reason": "expired"}, 1)]
    assert points["aioamztoken.refresh.duration"] == [({"outcome": "ok", "reason": "expired"}, 1)]
    assert points["aioamztoken.token_requests"] == [({"status": "200"}, 1)]
    assert points["aioamztoken.token_requests.active"] == [({}, 0)]
    assert emulator.token_requests == 1
    (refresh,) = otel.spans("aioamztoken.refresh")
    assert refresh.attributes is not None
    assert refresh.attributes["aioamztoken.account_id"] == ACCOUNT
    assert refresh.attributes["aioamztoken.attempts"] == 1
    assert refresh.attributes["aioamztoken.reason"] == "expired"
    assert refresh.status.status_code is StatusCode.UNSET
    (post,) = otel.spans("POST")
    assert post.kind is SpanKind.CLIENT
    assert post.parent is not None
    assert refresh.context is not None
    assert post.parent.span_id == refresh.context.span_id
    assert post.context is not None
    assert post.context.trace_id == refresh.context.trace_id
    assert post.attributes is not None
    assert post.attributes["http.response.status_code"] == 200
    assert post.attributes["url.full"] == emulator.token_url
    assert post.attributes["aioamztoken.grant_type"] == "refresh_token"


async def test_a_failing_endpoint_counts_a_failed_refresh_and_ends_its_span_in_error(
    make_manager: ManagerFactory, emulator: AmazonEmulator, otel: Otel
) -> None:
    mgr = make_manager(max_retries=3, retry_budget=20, **otel.options())
    await mgr.add_account(ACCOUNT, emulator.issue_refresh_token(ACCOUNT))
    emulator.fail_next(3, status=503, retry_after=0)
    with pytest.raises(at.TokenEndpointError):
        await mgr.get_access_token(ACCOUNT)
    points = otel.collect()
    assert points["aioamztoken.refreshes"] == [({"outcome": "failed", "reason": "expired"}, 1)]
    assert points["aioamztoken.token_requests"] == [({"status": "503"}, 3)]
    assert points["aioamztoken.token_requests.active"] == [({}, 0)]
    (refresh,) = otel.spans("aioamztoken.refresh")
    assert refresh.status.status_code is StatusCode.ERROR
    assert refresh.status.description == "TokenEndpointError"
    assert refresh.attributes is not None
    assert refresh.attributes["error.type"] == "TokenEndpointError"
    assert refresh.attributes["aioamztoken.attempts"] == 3
    (event,) = refresh.events
    assert event.name == "exception"
    assert event.attributes == {"exception.type": "aioamztoken.TokenEndpointError"}
    posts = otel.spans("POST")
    assert len(posts) == 3
    assert all(p.status.status_code is StatusCode.ERROR for p in posts)
    assert [p.attributes and p.attributes.get("http.request.resend_count") for p in posts] == [
        None,
        1,
        2,
    ]


async def test_an_unreachable_endpoint_counts_error_requests(
    make_manager: ManagerFactory, emulator: AmazonEmulator, otel: Otel, unused_tcp_port: int
) -> None:
    mgr = make_manager(
        token_url=f"http://127.0.0.1:{unused_tcp_port}/auth/o2/token",
        max_retries=2,
        retry_budget=20,
        **otel.options(),
    )
    await mgr.add_account(ACCOUNT, emulator.issue_refresh_token(ACCOUNT))
    with pytest.raises(at.TokenEndpointError):
        await mgr.get_access_token(ACCOUNT)
    points = otel.collect()
    assert points["aioamztoken.token_requests"] == [({"status": "error"}, 2)]
    posts = otel.spans("POST")
    assert len(posts) == 2
    assert all(p.attributes and p.attributes["error.type"].endswith("Error") for p in posts)


async def test_a_revoked_refresh_token_counts_needs_reauth(
    make_manager: ManagerFactory, emulator: AmazonEmulator, otel: Otel
) -> None:
    mgr = make_manager(**otel.options())
    await mgr.add_account(ACCOUNT, emulator.issue_refresh_token(ACCOUNT))
    emulator.revoke(ACCOUNT)
    with pytest.raises(at.InvalidGrantError):
        await mgr.get_access_token(ACCOUNT)
    points = otel.collect()
    assert points["aioamztoken.refreshes"] == [
        ({"outcome": "needs-reauth", "reason": "expired"}, 1)
    ]
    assert points["aioamztoken.token_requests"] == [({"status": "400"}, 1)]
    (refresh,) = otel.spans("aioamztoken.refresh")
    assert refresh.status.status_code is StatusCode.ERROR
    assert refresh.attributes is not None
    assert refresh.attributes["error.type"] == "InvalidGrantError"
    gauge = gauge_of(points)
    assert gauge == {"fresh": 0, "due": 0, "expired": 0, "needs-reauth": 1}


async def test_100_cached_calls_add_no_data_point_and_no_span(
    make_manager: ManagerFactory, emulator: AmazonEmulator, otel_delta: Otel
) -> None:
    mgr = make_manager(**otel_delta.options())
    await mgr.add_account(ACCOUNT, emulator.issue_refresh_token(ACCOUNT))
    await mgr.get_access_token(ACCOUNT)
    first = otel_delta.collect()
    assert total(first, "aioamztoken.refreshes") == 1
    spans = len(otel_delta.spans())
    for _ in range(100):
        await mgr.get_access_token(ACCOUNT)
        await mgr.get_token(ACCOUNT)
        assert mgr.cached_access_token(ACCOUNT) is not None
    after = otel_delta.collect()
    # Only the observable gauge reports (it is read at collection, not by the calls).
    assert set(after) == {"aioamztoken.accounts"}, after
    assert len(otel_delta.spans()) == spans
    assert emulator.token_requests == 1


async def test_every_reason_is_counted(
    make_manager: ManagerFactory, emulator: AmazonEmulator, otel: Otel
) -> None:
    mgr = make_manager(refresh_buffer=10, **otel.options())
    await mgr.add_account(ACCOUNT, emulator.issue_refresh_token(ACCOUNT))
    await mgr.get_access_token(ACCOUNT)  # expired (never fetched)
    await mgr.refresh(ACCOUNT)  # forced
    current = await mgr.get_access_token(ACCOUNT)
    emulator.expire_access_tokens(ACCOUNT)
    await mgr.refresh_if_current(ACCOUNT, current)  # rejected
    points = otel.collect()
    for reason in ("expired", "forced", "rejected"):
        assert total(points, "aioamztoken.refreshes", outcome="ok", reason=reason) == 1, reason
    reasons = sorted(
        str(s.attributes and s.attributes["aioamztoken.reason"])
        for s in otel.spans("aioamztoken.refresh")
    )
    assert reasons == ["expired", "forced", "rejected"]


async def test_a_due_token_and_a_background_refresh_are_counted_with_their_reason(
    make_manager: ManagerFactory, emulator: AmazonEmulator, otel: Otel
) -> None:
    store = at.MemoryTokenStore()
    # Due on arrival (inside a 600 s buffer), still valid for 500 s.
    await store.save(
        ACCOUNT,
        at.Token(
            emulator.issue_access_token(ACCOUNT, lifetime=500),
            emulator.issue_refresh_token(ACCOUNT),
            time.time() + 500,
        ),
    )
    mgr = make_manager(store=store, refresh_buffer=600, auto_refresh=False, **otel.options())
    await mgr.get_access_token(ACCOUNT)  # read from the store
    await mgr.get_access_token(ACCOUNT)  # served at once; refreshed meanwhile ("due")
    for _ in range(200):
        if total(otel.collect(), "aioamztoken.refreshes") == 1:
            break
        await asyncio.sleep(0.05)
    assert total(otel.collect(), "aioamztoken.refreshes", outcome="ok", reason="due") == 1

    background = make_manager(refresh_buffer=2, **otel.options())
    other = "amzn1.account.background"
    await background.add_account(other, emulator.issue_refresh_token(other))
    emulator.token_lifetime = 3.0  # due 1 s after issue, refreshed at 1-2 s
    await background.get_access_token(other)
    for _ in range(200):
        if total(otel.collect(), "aioamztoken.refreshes", reason="background") >= 1:
            break
        await asyncio.sleep(0.05)
    assert total(otel.collect(), "aioamztoken.refreshes", outcome="ok", reason="background") >= 1
    spans = [
        s
        for s in otel.spans("aioamztoken.refresh")
        if s.attributes and s.attributes["aioamztoken.reason"] == "background"
    ]
    assert spans
    assert all(s.parent is None for s in spans)


async def test_refreshes_are_children_of_the_callers_span(
    make_manager: ManagerFactory, emulator: AmazonEmulator, otel: Otel
) -> None:
    mgr = make_manager(**otel.options())
    await mgr.add_account(ACCOUNT, emulator.issue_refresh_token(ACCOUNT))
    tracer = otel.tracer_provider.get_tracer("the-app")
    with tracer.start_as_current_span("handle-request") as outer:
        await mgr.get_access_token(ACCOUNT)
    (refresh,) = otel.spans("aioamztoken.refresh")
    assert refresh.parent is not None
    assert refresh.parent.span_id == outer.get_span_context().span_id


async def test_a_token_read_from_the_store_is_no_refresh_and_no_span(
    make_manager: ManagerFactory, emulator: AmazonEmulator, otel: Otel
) -> None:
    store = at.MemoryTokenStore()
    await store.save(
        ACCOUNT,
        at.Token(
            emulator.issue_access_token(ACCOUNT),
            emulator.issue_refresh_token(ACCOUNT),
            time.time() + 3600,
        ),
    )
    mgr = make_manager(store=store, **otel.options())
    await mgr.get_access_token(ACCOUNT)
    points = otel.collect()
    assert "aioamztoken.refreshes" not in points
    assert otel.spans() == []
    gauge = gauge_of(points)
    assert gauge == {"fresh": 1, "due": 0, "expired": 0, "needs-reauth": 0}


async def test_an_unknown_account_is_not_a_failed_refresh(
    make_manager: ManagerFactory, otel: Otel
) -> None:
    mgr = make_manager(**otel.options())
    with pytest.raises(at.AccountNotFoundError):
        await mgr.get_access_token("amzn1.account.nobody")
    assert "aioamztoken.refreshes" not in otel.collect()
    assert otel.spans() == []


async def test_code_exchange_makes_an_exchange_code_span(
    make_manager: ManagerFactory, emulator: AmazonEmulator, otel: Otel
) -> None:
    mgr = make_manager(**otel.options())
    redirect = "https://app.example/callback"
    code = emulator.issue_code(ACCOUNT, redirect_uri=redirect)
    await mgr.exchange_code(ACCOUNT, code, redirect_uri=redirect)
    with pytest.raises(at.InvalidGrantError):
        await mgr.exchange_code(ACCOUNT, code, redirect_uri=redirect)  # spent
    ok, spent = otel.spans("aioamztoken.exchange_code")
    assert ok.attributes is not None
    assert spent.attributes is not None
    assert ok.attributes["aioamztoken.account_id"] == ACCOUNT
    assert ok.attributes["aioamztoken.attempts"] == 1
    assert ok.attributes["aioamztoken.reason"] == "authorization_code"
    assert ok.status.status_code is StatusCode.UNSET
    assert spent.status.status_code is StatusCode.ERROR
    assert spent.attributes["error.type"] == "InvalidGrantError"
    posts = otel.spans("POST")
    assert [p.parent and p.parent.span_id for p in posts] == [
        ok.context and ok.context.span_id,
        spent.context and spent.context.span_id,
    ]
    assert "aioamztoken.refreshes" not in otel.collect()  # an exchange is not a refresh


async def test_the_middleware_counts_its_retries_by_api(
    make_manager: ManagerFactory, emulator: AmazonEmulator, otel: Otel
) -> None:
    mgr = make_manager(**otel.options())
    await mgr.add_account(ACCOUNT, emulator.issue_refresh_token(ACCOUNT))
    middleware = mgr.middleware(ACCOUNT, origins=[emulator.api_url])
    async with aiohttp.ClientSession(middlewares=[middleware]) as http:
        async with http.get(f"{emulator.api_url}/v2/profiles") as resp:
            assert resp.status == 200
        emulator.api_fail_next(1)
        async with http.get(f"{emulator.api_url}/v2/profiles") as resp:
            assert resp.status == 200
    assert emulator.api_requests == 3
    points = otel.collect()
    assert points["aioamztoken.http.retries"] == [({"api": "ads"}, 1)]
    assert total(points, "aioamztoken.refreshes", outcome="ok", reason="rejected") == 1


async def test_lock_waits_are_measured_and_noted_on_the_span(
    make_manager: ManagerFactory, emulator: AmazonEmulator, otel: Otel, tmp_path: Path
) -> None:
    store = at.FileTokenStore(tmp_path / "tokens.json")
    mgr = make_manager(store=store, **otel.options())
    await mgr.add_account(ACCOUNT, emulator.issue_refresh_token(ACCOUNT))
    await mgr.get_access_token(ACCOUNT)
    points = otel.collect()
    assert total(points, "aioamztoken.lock.wait") == 2  # add_account, then the refresh
    (refresh,) = otel.spans("aioamztoken.refresh")
    assert refresh.attributes is not None
    assert refresh.attributes["aioamztoken.lock_wait"] >= 0


async def test_managers_sharing_a_provider_share_one_set_of_instruments(
    make_manager: ManagerFactory, emulator: AmazonEmulator, otel: Otel
) -> None:
    managers = [make_manager(**otel.options()) for _ in range(3)]
    for n, mgr in enumerate(managers):
        account = f"{ACCOUNT}.{n}"
        await mgr.add_account(account, emulator.issue_refresh_token(account))
        await mgr.get_access_token(account)
    points = otel.collect()
    assert points["aioamztoken.refreshes"] == [({"outcome": "ok", "reason": "expired"}, 3)]
    gauge = gauge_of(points)
    assert gauge["fresh"] == 3
    await managers[0].aclose()
    gauge = gauge_of(otel.collect())
    assert gauge["fresh"] == 2


async def test_no_secret_in_any_span_attribute_event_status_or_metric(
    make_manager: ManagerFactory, emulator: AmazonEmulator, otel: Otel
) -> None:
    secrets = [emulator.client_secret]
    mgr = make_manager(max_retries=2, **otel.options())
    # A code exchange with PKCE, then refreshes, a forced one, a failing and a revoked one.
    verifier, challenge = at.make_pkce_pair()
    redirect = "https://app.example/callback"
    code = emulator.issue_code(ACCOUNT, redirect_uri=redirect, code_challenge=challenge)
    secrets += [code, verifier]
    token = await mgr.exchange_code(ACCOUNT, code, redirect_uri=redirect, code_verifier=verifier)
    secrets += [token.access_token, token.refresh_token]
    secrets.append((await mgr.refresh(ACCOUNT)).access_token)
    emulator.fail_next(2, status=500, body='{"error":"server_error","error_description":"x"}')
    with pytest.raises(at.TokenEndpointError):
        await mgr.refresh(ACCOUNT)
    other = "amzn1.account.revoked"
    refresh_token = emulator.issue_refresh_token(other)
    secrets.append(refresh_token)
    await mgr.add_account(other, refresh_token)
    emulator.revoke(other)
    with pytest.raises(at.InvalidGrantError):
        await mgr.get_access_token(other)
    spans = otel.spans()
    assert {s.name for s in spans} == {"aioamztoken.exchange_code", "aioamztoken.refresh", "POST"}
    dumped = [s.to_json() for s in spans]
    data = otel.reader.get_metrics_data()
    assert data is not None
    dumped.append(data.to_json())
    text = "\n".join(dumped)
    for secret in secrets:
        assert secret
        assert secret not in text
    for marker in ("Atza|", "Atzr|", "ANcode", "client_secret", "Bearer"):
        assert marker not in text
    # Every value is one of ours: names, ids, counts, statuses, types, the token URL.
    for span in spans:
        for key in span.attributes or {}:
            assert key.startswith(("aioamztoken.", "http.", "url.", "server.", "error.")), key
        for event in span.events:
            assert set(event.attributes or {}) == {"exception.type"}


def run_python(*pieces: str, **env: str) -> subprocess.CompletedProcess[str]:
    code = "\n".join(textwrap.dedent(piece) for piece in pieces)
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, **env},
        check=False,
    )


WORK = """
    import asyncio, sys
    import aioamztoken as at
    from aioamztoken.testing import AmazonEmulator

    assert not [m for m in sys.modules if m.startswith("opentelemetry")], "on import"

    async def main():
        async with AmazonEmulator() as emu:
            async with at.AsyncTokenManager(
                emu.client_id, emu.client_secret, store=at.MemoryTokenStore(),
                token_url=emu.token_url, {options}
            ) as mgr:
                await mgr.add_account("a", emu.issue_refresh_token("a"))
                await mgr.get_access_token("a")
                await mgr.refresh("a")
                assert emu.token_requests == 2

    asyncio.run(main())
    print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
"""

BLOCK = """
    import importlib.abc, sys

    class NoOtel(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "opentelemetry" or name.startswith("opentelemetry."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoOtel())
"""


def test_without_the_api_opentelemetry_is_never_imported() -> None:
    done = run_python(BLOCK, WORK.format(options=""))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    # -X importtime lists every import begun: the one attempt (refused, as when the API is
    # not installed) and nothing under it.
    assert "opentelemetry." not in done.stderr


def test_providers_without_the_api_are_a_clear_error() -> None:
    done = run_python(BLOCK, WORK.format(options="meter_provider=object(),"))
    assert done.returncode != 0
    assert "pip install 'aioamztoken[otel]'" in done.stderr


def test_importing_the_library_never_imports_opentelemetry_even_when_installed() -> None:
    done = run_python(
        "import sys, aioamztoken, aioamztoken.testing, aioamztoken.cli\n"
        "print([m for m in sys.modules if m.startswith('opentelemetry')])"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_no_providers_means_the_global_ones() -> None:
    setup = """
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        reader, exporter = InMemoryMetricReader(), InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(tracer_provider)
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    """
    report = """
        import json
        data = json.loads(reader.get_metrics_data().to_json())
        names = [m["name"] for r in data["resource_metrics"] for s in r["scope_metrics"]
                 for m in s["metrics"]]
        print(json.dumps({"spans": [s.name for s in exporter.get_finished_spans()],
                          "metrics": sorted(names)}))
    """
    work = WORK.replace(
        '    assert not [m for m in sys.modules if m.startswith("opentelemetry")], "on import"\n',
        "",
    )
    done = run_python(setup, work.format(options=""), report)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["spans"].count("aioamztoken.refresh") == 2
    assert result["spans"].count("POST") == 2
    assert "aioamztoken.refreshes" in result["metrics"]
    assert "aioamztoken.accounts" in result["metrics"]


async def test_a_refresh_cut_short_by_aclose_leaves_nothing_in_flight(
    make_manager: ManagerFactory, emulator: AmazonEmulator, otel: Otel
) -> None:
    # aclose() lets a request already sent finish within request_timeout (issue 11):
    # with a 1 s timeout and a 5 s answer, the close cuts it short at its timeout.
    mgr = make_manager(request_timeout=1.0, **otel.options())
    await mgr.add_account(ACCOUNT, emulator.issue_refresh_token(ACCOUNT))
    emulator.latency = 5.0
    waiting = asyncio.ensure_future(mgr.get_access_token(ACCOUNT))
    for _ in range(400):
        if emulator.in_flight:
            break
        await asyncio.sleep(0.01)
    await mgr.aclose()
    with pytest.raises(at.ManagerClosedError):
        await waiting
    points = otel.collect()
    assert points["aioamztoken.token_requests.active"] == [({}, 0)]
    # The request timed out (the close let it run until then): a failed refresh.
    assert points["aioamztoken.refreshes"] == [({"outcome": "failed", "reason": "expired"}, 1)]
    (refresh,) = otel.spans("aioamztoken.refresh")
    assert refresh.attributes is not None
    assert refresh.attributes["aioamztoken.outcome"] == "failed"
    (post,) = otel.spans("POST")
    assert post.status.status_code is StatusCode.ERROR  # no answer came


def test_the_blocking_manager_passes_the_providers_on(otel: Otel) -> None:
    with (
        AmazonEmulator.running_in_thread() as emu,
        at.BlockingTokenManager(
            emu.client_id,
            emu.client_secret,
            store=at.MemoryTokenStore(),
            token_url=emu.token_url,
            **otel.options(),
        ) as mgr,
    ):
        mgr.add_account(ACCOUNT, emu.issue_refresh_token(ACCOUNT))
        mgr.get_access_token(ACCOUNT)
    points = otel.collect()
    assert points["aioamztoken.refreshes"] == [({"outcome": "ok", "reason": "expired"}, 1)]
    assert len(otel.spans("aioamztoken.refresh")) == 1
