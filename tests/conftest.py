"""Shared fixtures: the emulator (our only stand-in for Amazon) and managers bound to it."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable, Generator
from typing import Any

import pytest

from aioamztoken import AsyncTokenManager, MemoryTokenStore
from aioamztoken.testing import AmazonEmulator

# The database servers (session-scoped) and the engines of the shared store suite.
from .engines import (  # noqa: F401
    engine,
    postgres_server,
    redis_cluster,
    redis_sentinel,
    sql_engine,
    valkey_server,
)

REQUIRE_SERVICES = os.environ.get("AIOAMZTOKEN_REQUIRE_SERVICES") == "1"
# "seconduser" needs root (CI has it): there, a skip of the ownership tests is a failure too.
SERVICE_MARKERS = ("redis", "secretservice", "seconduser", "browser", "postgres", "valkey")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if (
        REQUIRE_SERVICES
        and report.skipped
        and any(item.get_closest_marker(m) for m in SERVICE_MARKERS)
    ):
        # In CI a test that needs a real service must run: a skip there is a failure.
        report.outcome = "failed"
        report.longrepr = (
            f"skipped, but AIOAMZTOKEN_REQUIRE_SERVICES=1 requires it: {report.longrepr}"
        )


@pytest.fixture(autouse=True)
def no_asyncio_errors(caplog: pytest.LogCaptureFixture) -> Generator[None, None, None]:
    """Fail any test during which asyncio reported an error: a task destroyed while
    pending, an exception never retrieved, an unclosed transport..."""
    yield
    errors = [
        r.getMessage()
        for r in caplog.get_records("call") + caplog.get_records("teardown")
        if r.name == "asyncio" and r.levelno >= logging.ERROR
    ]
    assert errors == [], errors


@pytest.fixture
async def emulator() -> AsyncIterator[AmazonEmulator]:
    async with AmazonEmulator() as emu:
        yield emu


ManagerFactory = Callable[..., AsyncTokenManager]


@pytest.fixture
async def make_manager(emulator: AmazonEmulator) -> AsyncIterator[ManagerFactory]:
    """Build managers pointed at the emulator; each is closed at the end of the test."""
    made: list[AsyncTokenManager] = []

    def factory(**options: Any) -> AsyncTokenManager:
        options.setdefault("store", MemoryTokenStore())
        options.setdefault("token_url", emulator.token_url)
        mgr = AsyncTokenManager(emulator.client_id, emulator.client_secret, **options)
        made.append(mgr)
        return mgr

    yield factory
    for mgr in made:
        await mgr.aclose()
