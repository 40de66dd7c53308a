"""A short soak: the zero-downtime bounds hold under a flaky, slow endpoint and busy callers."""

from __future__ import annotations

from bench.soak import run_soak


async def test_short_soak_has_no_caller_error_and_bounded_refreshes_and_load() -> None:
    result = await run_soak(
        accounts=60, lifetime=3.0, duration=7.0, workers=20, refresh_buffer=1.0, cap=5, seed=7
    )
    assert result.caller_errors == 0
    assert result.calls > 1000
    assert result.failed_requests > 0  # the endpoint really did fail, and nobody noticed
    assert result.refreshes <= 1.6 * result.ideal_refreshes
    assert result.refreshes >= 0.8 * result.ideal_refreshes  # tokens really were renewed
    assert result.peak_in_flight <= 5
