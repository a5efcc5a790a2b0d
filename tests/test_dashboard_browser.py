"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright;
no browser is downloaded): it loads with no console errors, shows the right counts,
updates by itself after a CLI ``advance`` in another process, fits a phone's width,
and its screenshot is not blank (issue 18, part 1)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from statekit import Store
from tests.test_dashboard import TOKEN, fill, serve_process
from tests.test_report import png_pixels

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no browser: chromium is not installed "
                                                         "(apt-get install chromium; .ci/run installs it)")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str]]:
    store = Store.init(tmp_path / "store", ledger=True)
    fill(store)
    store.close()
    proc, base = serve_process(store.root, "--token", TOKEN)
    try:
        yield store.root, base
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


def open_page(browser: Any, url: str, width: int = 1280) -> tuple[Any, list[str]]:
    """A new page at ``url``, and the list its console errors and failed loads go to."""
    page = browser.new_page(viewport={"width": width, "height": 900})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning")
            else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    # a poll in flight when the page navigates away is aborted: that is no failure
    page.on("requestfailed", lambda r: problems.append(f"failed: {r.url} ({r.failure})")
            if "ERR_ABORTED" not in (r.failure or "") else None)
    page.goto(url, wait_until="load")
    return page, problems


def cell(page: Any, selector: str) -> str:
    return page.locator(selector).first.inner_text().strip()


def test_the_dashboard_loads_counts_and_updates_after_a_cli_advance(served: tuple[str, str], browser: Any,
                                                                     tmp_path: Path) -> None:
    root, base = served
    page, problems = open_page(browser, f"{base}/?token={TOKEN}")  # sets the cookie, drops the token from the URL
    assert page.url == f"{base}/"
    assert cell(page, "#total-episodes") == "4"
    assert cell(page, 'tr[data-stage="downloading"] .n') == "2"
    assert cell(page, 'tr[data-stage="failed"] .n') == "1"
    assert "failed" in cell(page, 'tr[data-stage="failed"] td') and "oliver/ep002" in page.content()
    page.evaluate("window.notReloaded = true")

    done = subprocess.run([sys.executable, "-m", "statekit.cli", "--root", root, "advance", "oliver/ep002",
                           "downloading", "--message", "retry by hand"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    committed = time.monotonic()
    # (Playwright's expect: its own injected script; the page's CSP refuses wait_for_function's eval)
    sync_api.expect(page.locator('tr[data-stage="downloading"] .n')).to_have_text("3", timeout=10_000)
    seen_after = time.monotonic() - committed
    assert page.evaluate("window.notReloaded === true"), "the page was reloaded"
    assert cell(page, 'tr[data-stage="failed"] .n') == "0"
    assert "live" in cell(page, "#live")
    print(f"update seen {seen_after:.2f} s after the advance returned")  # no timing assert: a shared machine

    shot = page.screenshot(full_page=False)
    width, height, rows = png_pixels(shot)
    assert (width, height) == (1280, 900)
    bpp = len(rows[0]) // width
    pixels = [row[x:x + 3] for row in rows[::4] for x in range(0, len(row), bpp * 4)]
    colours = Counter(pixels)
    assert len(colours) > 20, "the page is blank or one colour"
    assert colours.most_common(1)[0][1] < 0.9 * len(pixels)
    light = [sum(p) / 3 for p in pixels]
    mean = sum(light) / len(light)
    assert sum((v - mean) ** 2 for v in light) / len(light) > 100, "no contrast: a blank page"
    assert any(r < 60 and g < 60 and b < 60 for r, g, b in colours), "no dark text"
    assert problems == [], problems


def test_episode_page_list_search_and_phone_width(served: tuple[str, str], browser: Any) -> None:
    _, base = served
    page, problems = open_page(browser, f"{base}/episodes?token={TOKEN}", width=390)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, "the page scrolls sideways on a phone"
    assert page.locator("table#episodes tbody tr").count() == 4
    page.fill("#search", "stars")  # filters the rows as you type, no request
    assert page.locator("table#episodes tbody tr:not([hidden])").count() == 1
    page.fill("#search", "zzz")
    assert page.locator("#no-match").is_visible()
    page.fill("#search", "")
    page.locator('.chips a[data-stage="downloading"]').click()
    page.wait_for_url(f"{base}/episodes?stage=downloading")
    assert page.locator("table#episodes tbody tr").count() == 2
    page.locator('a[href="/episodes/tidal/tn1"]').click()
    page.wait_for_url(f"{base}/episodes/tidal/tn1")
    assert "worker-7" in cell(page, "#lease")
    assert page.locator("#history tbody tr").count() == 2  # create, start
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.goto(f"{base}/", wait_until="load")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    # readable without colour: every stage's colour comes with its name
    stages = page.locator("tr[data-stage]").count()
    assert stages == 11 and page.locator("tr[data-stage] .stage .name").count() == stages  # the archive preset
    assert problems == [], problems
