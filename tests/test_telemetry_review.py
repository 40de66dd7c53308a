"""Review of issue 16 (telemetry, live CLI, pictures): regression tests for what it fixed.

With the real OpenTelemetry SDK (an in-memory metric reader) against the emulator, the
pictures as the docs show them, and the CLI on a real pseudo-terminal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from aioamztoken.testing import AmazonEmulator

from . import test_cli

cli_env = test_cli.cli_env
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
    pytest.importorskip("opentelemetry.sdk")
    done = run_python(STRADDLE)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    points = result["points"]
    assert points['aioamztoken.accounts{"state": "fresh"}'] == 3, points
    assert points['aioamztoken.refreshes{"outcome": "ok", "reason": "expired"}'] == 3, points
    assert not [w for w in result["warnings"] if "created already" in w], result["warnings"]


# -- the docs ------------------------------------------------------------------------------

DOCS = ROOT / "docs"
#: The width of the docs' content column (furo, a 1200 px window): figures wider than
#: this are scaled down to it, and their text with them.
CONTENT_WIDTH_PX = 736


def _blocks_after_figures(text: str) -> list[str]:
    """The first line after each figure (its options and caption skipped)."""
    lines = text.splitlines()
    found = []
    for n, line in enumerate(lines):
        if not line.startswith((".. figure::", ".. graphviz::", ".. image::")):
            continue
        rest = lines[n + 1 :]
        for m, following in enumerate(rest):
            if following.strip() and not following.startswith(" "):
                found.append(following)
                break
            if m == len(rest) - 1:
                found.append("")
    return found


def test_no_picture_cuts_a_sentence_in_two() -> None:
    """Fixed: the token-lifetime figure sat between "a moment drawn uniformly from [...]"
    and "so callers never wait...", so the sentence went on below the caption."""
    for page in sorted(DOCS.glob("*.rst")):
        for line in _blocks_after_figures(page.read_text(encoding="utf-8")):
            assert not line[:1].islower(), f"{page.name}: a picture interrupts: {line!r}"


def test_every_figure_text_is_legible_at_the_docs_width(tmp_path: Path) -> None:
    """Fixed: the wave plot was drawn 10 inches wide and shown at 736 px, so its smallest
    text was 7.5 px; the consent flow's step labels were 9.4 px. Now every text is at least
    8 px on the page, and each step of the consent flow at least 10 px."""
    pytest.importorskip("matplotlib", reason="the docs extra is not installed")
    import re

    from matplotlib.text import Text

    sys.path.insert(0, str(DOCS / "figures"))
    import consent
    import lifetime
    import waves
    from _style import save

    data = json.loads((DOCS / "figures" / "waves.json").read_text(encoding="utf-8"))
    for name, figure in (
        ("lifetime", lifetime.draw()),
        ("consent", consent.draw()),
        ("waves", waves.draw(data)),
    ):
        texts = [t for t in figure.findobj(Text) if t.get_text().strip() and t.get_visible()]
        svg = save(figure, tmp_path / f"{name}.svg").read_text(encoding="utf-8")
        match = re.search(r'<svg[^>]*\swidth="([\d.]+)pt"', svg)
        assert match is not None, name
        natural_px = float(match.group(1)) * 4 / 3  # CSS: 1 pt = 4/3 px
        scale = min(1.0, CONTENT_WIDTH_PX / natural_px)
        for text in texts:
            shown_px = text.get_fontsize() * 4 / 3 * scale
            assert shown_px >= 8, (name, text.get_text(), round(shown_px, 1))
            if name == "consent" and re.match(r"\d+\. ", text.get_text()):
                assert shown_px >= 10, (text.get_text(), round(shown_px, 1))


def test_the_retries_metric_is_documented_for_every_api_family_and_adapter() -> None:
    """Fixed: the docs said ``api`` was ``ads`` and only the middleware retried, while
    SP-API, the httpx and requests adapters and grantless tokens are counted too."""
    from aioamztoken._signing import API_FAMILIES

    page = (DOCS / "observability.rst").read_text(encoding="utf-8")
    row = page.split("``aioamztoken.http.retries``", 1)[1].split("* - ``", 1)[0]
    for api in API_FAMILIES:
        assert f"``{api}``" in row, api
    for adapter in ("middleware", "httpx", "requests", "grantless"):
        assert adapter in row, adapter


def test_the_wave_caption_says_its_run_is_not_the_tables() -> None:
    """Fixed: the plot (mean 870/s) and the table under it (mean 1,001/s) come from two
    runs, and nothing said so."""
    page = (DOCS / "performance.rst").read_text(encoding="utf-8")
    caption = page.split(".. figure:: _generated/waves.svg", 1)[1].split(".. list-table::")[0]
    assert "different runs" in caption


# -- the live CLI --------------------------------------------------------------------------


def _json_documents(text: str) -> list[object]:
    """Every JSON list in ``text``, in order (other lines, such as stderr's, skipped)."""
    decoder = json.JSONDecoder()
    found: list[object] = []
    at = text.find("[")
    while at != -1:
        try:
            value, end = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            at = text.find("[", at + 1)
            continue
        found.append(value)
        at = text.find("[", end)
    return found


@pytest.mark.parametrize("where", ["after", "before"])
async def test_accounts_watch_with_json_on_a_terminal_prints_json(
    cli_env: dict[str, str], where: str
) -> None:
    """Fixed: ``accounts --watch --json`` on a terminal drew the live table and ignored
    ``--json``; it prints the JSON list at every update, as off a terminal."""
    import time

    import pexpect

    import aioamztoken as at

    store = at.FileTokenStore(cli_env["AIOAMZTOKEN_STORE"].removeprefix("file://"))
    now = time.time()
    await store.save("acct-a", at.Token("Atza|a", "Atzr|a", now + 3600, issued_at=now))
    await store.save("acct-b", at.Token("Atza|b", "Atzr|b", now + 3600, needs_reauth=True))
    options = ["accounts", "--watch", "--count", "2", "--interval", "0.2"]
    args = ["--json", *options] if where == "before" else [*options, "--json"]
    child = pexpect.spawn(
        sys.executable,
        ["-m", "aioamztoken", *args],
        env={**cli_env, "TERM": "xterm-256color"},
        dimensions=(30, 110),
        timeout=60,
    )
    output = child.read().decode("utf-8", "replace").replace("\r\n", "\n")
    child.close()
    assert child.exitstatus == 0, output
    documents = _json_documents(output)
    assert len(documents) == 2, output
    for document in documents:
        assert isinstance(document, list)
        states = {row["account_id"]: row["state"] for row in document}
        assert states == {"acct-a": "fresh", "acct-b": "needs-reauth"}, document
    assert "ACCOUNT" not in output  # no table


async def test_a_provider_that_cannot_be_weakly_referenced_is_shared_too(
    emulator: AmazonEmulator,
) -> None:
    """The lookup that fixed the gauge above also serves providers without weak
    references (a wrapper with ``__slots__``): two managers on one count both accounts."""
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    import aioamztoken as at

    class Slotted:
        __slots__ = ("inner",)

        def __init__(self, inner: MeterProvider) -> None:
            self.inner = inner

        def get_meter(self, *args: object, **kwargs: object) -> object:
            return self.inner.get_meter(*args, **kwargs)  # type: ignore[arg-type]

    reader = InMemoryMetricReader()
    sdk = MeterProvider(metric_readers=[reader])
    provider = Slotted(sdk)
    managers = [
        at.AsyncTokenManager(
            emulator.client_id,
            emulator.client_secret,
            store=at.MemoryTokenStore(),
            token_url=emulator.token_url,
            meter_provider=provider,
        )
        for _ in range(2)
    ]
    try:
        for n, mgr in enumerate(managers):
            await mgr.add_account(f"acct-{n}", emulator.issue_refresh_token(f"acct-{n}"))
            await mgr.get_access_token(f"acct-{n}")
        data = reader.get_metrics_data()
        assert data is not None
        gauge = {
            point.attributes["state"]: point.value
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == "aioamztoken.accounts"
            for point in metric.data.data_points
        }
        assert gauge["fresh"] == 2, gauge
    finally:
        for mgr in managers:
            await mgr.aclose()
        sdk.shutdown()
