"""The report in a real headless Chromium: loads offline without errors, plots render, the trace filters work.

Needs Debian's `chromium` (/usr/bin/chromium) and the `playwright` Python package (dev extra; its wheel ships the
driver, so `playwright install` is never needed). Set CAI_SCREENSHOT=path.png to keep the full-page screenshot.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_report import full_inputs

from constitutional.report import write_report

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """The full synthetic run's report, opened from disk; collects errors, dialogs and any network request."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install it with `apt-get update && apt-get install -y chromium`")
    from playwright.sync_api import sync_playwright

    folder = tmp_path_factory.mktemp("browser")
    report = Path(write_report(full_inputs(folder), folder / "report.html")["path"])
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        tab = browser.new_page(viewport={"width": 1280, "height": 900})
        tab.problems = []  # console errors, uncaught exceptions, dialogs
        tab.requests = []  # anything not read from the file itself or a data: URI
        tab.on("console", lambda m: m.type == "error" and tab.problems.append(f"console: {m.text}"))
        tab.on("pageerror", lambda e: tab.problems.append(f"exception: {e}"))
        tab.on("dialog", lambda d: (tab.problems.append(f"dialog: {d.message}"), d.dismiss()))
        tab.on("request", lambda r: r.url.startswith(("file:", "data:")) or tab.requests.append(r.url))
        tab.goto(report.as_uri(), wait_until="load")
        yield tab
        browser.close()


def visible_traces(page) -> int:
    return page.locator("#trace-list details.trace").count()


def test_loads_offline_without_errors(page):
    assert page.problems == []
    assert page.requests == []
    assert page.title().startswith("Run report")


def test_every_plot_renders(page):
    images = page.locator("figure.plot img")
    assert images.count() == 5  # Elo, Pareto, revision curve, label plots, reliability diagram
    for i in range(images.count()):
        image = images.nth(i)
        assert image.evaluate("img => img.complete && img.naturalWidth > 0"), f"plot {i} did not load"
        box = image.bounding_box()
        assert box and box["width"] > 100 and box["height"] > 50, f"plot {i} has no size: {box}"


def test_judge_quality_is_shown_above_each_judged_figure(page):
    for section in ("elo", "pareto", "revisions", "harm"):
        callout = page.locator(f"#{section} .callout")
        assert callout.count() == 1 and callout.is_visible(), f"no judge quality in {section}"
        assert "Judge quality." in callout.inner_text()


def test_hostile_model_text_is_shown_as_text(page):
    page.fill("#trace-search", "pwned")
    assert visible_traces(page) == 1
    assert "<script>alert('pwned')</script>" in page.locator("#trace-list").inner_text()
    assert page.problems == []  # no alert fired
    page.fill("#trace-search", "")


def test_search_box_filters_traces(page):
    assert visible_traces(page) == 5
    page.fill("#trace-search", "capital peru")
    assert visible_traces(page) == 1
    assert "Lima" in page.locator("#trace-list").inner_text()
    page.fill("#trace-search", "sharp knives")  # critique text is searched too
    assert visible_traces(page) == 4
    page.fill("#trace-search", "")
    assert visible_traces(page) == 5


def test_kind_and_principle_filters(page):
    page.select_option("#trace-kind", "helpful")
    assert visible_traces(page) == 1
    page.select_option("#trace-kind", "red_team")
    assert visible_traces(page) == 4
    page.select_option("#trace-principle", "general-harm")
    assert visible_traces(page) == 2
    assert page.locator("#trace-count").inner_text() == "Showing 2 of 2 matching (5 traces)"
    page.select_option("#trace-principle", "toxicity-insults")
    assert visible_traces(page) == 1
    page.select_option("#trace-kind", "helpful")
    assert visible_traces(page) == 0 and "No trace matches" in page.locator("#trace-list").inner_text()
    page.select_option("#trace-kind", "")
    page.select_option("#trace-principle", "")
    assert visible_traces(page) == 5


def test_principle_text_is_resolved_and_screenshot_saved(page, tmp_path):
    first = page.locator("#trace-list details.trace").first
    assert first.get_attribute("open") is not None
    steps = first.locator(".step")
    assert steps.count() == 2
    assert len(steps.first.locator(".principle-text").inner_text()) > 10
    path = Path(os.environ.get("CAI_SCREENSHOT") or tmp_path / "report.png")
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    print(f"screenshot: {path}")
