"""Review of issue 16 (telemetry, live CLI, pictures): regression tests for what it fixed.

With the real OpenTelemetry SDK (an in-memory metric reader) against the emulator, and the
CLI in real subprocesses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("opentelemetry.sdk")

ROOT = Path(__file__).resolve().parent.parent


def run_python(source: str) -> subprocess.CompletedProcess[str]:
    """``source`` in a fresh interpreter (its own global OpenTelemetry providers)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )


STRADDLE = """
    import asyncio, json, logging

    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    import aioamztoken as at
    from aioamztoken.testing import AmazonEmulator

    warnings = []

    class Keep(logging.Handler):
        def emit(self, record):
            warnings.append(record.getMessage())

    logging.getLogger("opentelemetry").addHandler(Keep(level=logging.WARNING))
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])


    async def main():
        async with AmazonEmulator() as amazon:
            def manager(**options):
                return at.AsyncTokenManager(
                    amazon.client_id, amazon.client_secret, store=at.MemoryTokenStore(),
                    token_url=amazon.token_url, **options,
                )

            early = manager()  # the global provider is still OpenTelemetry's proxy
            metrics.set_meter_provider(provider)
            late = manager()  # the global provider, set by now
            explicit = manager(meter_provider=provider)  # the same one, passed in
            for n, mgr in enumerate((early, late, explicit)):
                await mgr.add_account(f"acct-{n}", amazon.issue_refresh_token(f"acct-{n}"))
                await mgr.get_access_token(f"acct-{n}")
            data = json.loads(reader.get_metrics_data().to_json())
            for mgr in (early, late, explicit):
                await mgr.aclose()
        points = {}
        for resource in data["resource_metrics"]:
            for scope in resource["scope_metrics"]:
                for metric in scope["metrics"]:
                    for point in metric["data"]["data_points"]:
                        if "value" not in point:
                            continue  # a histogram
                        key = metric["name"] + json.dumps(point["attributes"], sort_keys=True)
                        points[key] = points.get(key, 0) + point["value"]
        print(json.dumps({"points": points, "warnings": warnings}))


    asyncio.run(main())
"""


def test_the_accounts_gauge_counts_managers_made_before_and_after_the_global_provider() -> None:
    """Fixed: a manager made before ``metrics.set_meter_provider()`` (on OpenTelemetry's
    proxy) and one made after (or given that provider) made two sets of instruments on one
    meter; the meter kept only the first gauge callback, so the later managers' accounts
    were missing from ``aioamztoken.accounts``, and the SDK warned about duplicates."""
    done = run_python(STRADDLE)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    points = result["points"]
    assert points['aioamztoken.accounts{"state": "fresh"}'] == 3, points
    assert points['aioamztoken.refreshes{"outcome": "ok", "reason": "expired"}'] == 3, points
    assert not [w for w in result["warnings"] if "created already" in w], result["warnings"]
