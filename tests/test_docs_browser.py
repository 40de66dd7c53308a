"""The pictures of the docs, looked at in a real browser: headless Chromium, offline.

The docs are built once (as ``tox -e docs`` does); each page with a picture is opened from
disk, the picture is scrolled into view and photographed, and the photograph must show a
drawing (many colours, ink on most rows), not a broken-image icon or an empty box. No page
may ask for anything but local files.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")

pytestmark = [
    pytest.mark.browser,  # in CI (AIOAMZTOKEN_REQUIRE_SERVICES=1) a skip here is a failure
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM and DRIVER and shutil.which("dot")),
        reason="needs chromium, chromium-driver and graphviz (Debian packages)",
    ),
]

PICTURES = [
    ("concepts.html", "img[src$='lifetime.svg']"),
    ("quickstart.html", "img[src$='consent.svg']"),
    ("fleets.html", "object.graphviz"),
    ("performance.html", "img[src$='waves.svg']"),
]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("sphinx")
    out = tmp_path_factory.mktemp("docs") / "html"
    build = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html"]
    done = subprocess.run(
        [*build, "-d", str(out.parent / "doctrees"), str(ROOT / "docs"), str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="aioamztoken-chromium-")
    options = webdriver.ChromeOptions()
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=1280,1800",
    ):
        options.add_argument(argument)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.parametrize(("page", "selector"), PICTURES)
def test_each_picture_shows_in_the_built_page(
    site: Path, browser: Any, page: str, selector: str, tmp_path: Path
) -> None:
    from PIL import Image
    from selenium.webdriver.common.by import By

    browser.get((site / page).as_uri())
    element = browser.find_element(By.CSS_SELECTOR, selector)
    browser.execute_script(
        "arguments[0].scrollIntoView({block: 'center', behavior: 'instant'});", element
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        state = browser.execute_script(
            "const e = arguments[0], r = e.getBoundingClientRect();"
            "return {w: r.width, h: r.height, left: r.left, top: r.top,"
            " ready: e.tagName !== 'IMG' || (e.complete && e.naturalWidth > 0),"
            " ratio: window.devicePixelRatio};",
            element,
        )
        if state["ready"] and state["w"] > 0:
            break
        time.sleep(0.1)
    assert state["ready"], f"{selector} did not load in {page}"
    assert state["w"] >= 500, state  # shown at the width of the text, not as an icon
    assert state["h"] >= 200, state
    shot = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")
    ratio = state["ratio"]
    box = tuple(
        int(v * ratio)
        for v in (
            state["left"],
            state["top"],
            state["left"] + state["w"],
            state["top"] + state["h"],
        )
    )
    picture = shot.crop(box)
    picture.save(tmp_path / f"{page}.png")  # kept by pytest for whoever wants to look
    colours = picture.getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 50, f"{page}: a blank picture ({len(colours)} colours)"
    width, height = picture.size
    pixels = picture.load()
    inked = sum(
        any(sum(pixels[x, y]) < 600 for x in range(0, width, 2)) for y in range(0, height, 4)
    )
    assert inked > 0.4 * len(range(0, height, 4)), f"{page}: mostly empty"
    requests = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert [r for r in requests if not r.startswith("file:")] == []


def test_no_page_refers_to_an_image_on_the_network(site: Path) -> None:
    for page in site.glob("*.html"):
        text = page.read_text(encoding="utf-8")
        for attribute in ('src="http', 'data="http', "url(http"):
            assert attribute not in text, f"{page.name}: {attribute}"
    assert os.listdir(site / "_images")
