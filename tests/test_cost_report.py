"""thaw cost --html: the report opened in a real headless browser (Debian's chromium,
driven by playwright; never a downloaded browser). The plots must render: SVG with
the series, break-even marks and bars, a screenshot that is not blank, and no request
leaves the file (self-contained)."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image
from test_cost import exposition

from thaw.adapters.cli.command import main

CHROMIUM = os.environ.get("THAW_CHROMIUM", "/usr/bin/chromium")
HOW = (
    "the HTML report test needs Debian's chromium: `make browser` installs it as root "
    "(apt-get install -y chromium), or set THAW_CHROMIUM to a Chromium binary"
)


def _chromium() -> str:
    found = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    if not found:
        pytest.fail(HOW)  # never skip: CI must run it
    return found


@pytest.fixture
def report(tmp_path: Path) -> Path:
    start = exposition({"pay": {}, "odd<name>&$x$": {}}, taken=1000.0, process_cpu=1.0)
    end = exposition(
        {
            "pay": {
                "ok": 9_500,
                "retry": 300,
                "trigger": "stream",
                "nak": 250,
                "dead": 50,
                "sum": 21.0,
                "buckets": [0, 2000, 6000, 1500, 300, 0, 0, 0],
                "cpu": 9.0,
                "cold": 2,
            },
            "odd<name>&$x$": {"ok": 200, "sum": 0.02, "buckets": [200, 0, 0, 0, 0, 0, 0, 0]},
        },
        taken=1100.0,
        process_cpu=16.0,
        max_rss=90 * 2**20,
    )
    (tmp_path / "a.prom").write_text(start)
    (tmp_path / "b.prom").write_text(end)
    page = tmp_path / "report.html"
    args = ["cost", "--from", str(tmp_path / "a.prom"), "--to", str(tmp_path / "b.prom")]
    assert main([*args, "--html", str(page)]) == 0
    return page


def test_the_report_is_self_contained_and_escapes_names(report: Path) -> None:
    text = report.read_text()
    for attribute in ('src="http', "src='http", 'href="http', "url(http", "<script"):
        assert attribute not in text
    assert "odd<name>&" not in text  # a capability name is data, never markup
    assert "odd&lt;name&gt;&amp;" in text


def test_the_report_renders_its_plots_in_a_headless_browser(report: Path) -> None:
    from playwright.sync_api import sync_playwright

    executable = _chromium()
    outside: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on(
                "request",
                lambda request: (
                    outside.append(request.url)
                    if not request.url.startswith(("file:", "data:"))
                    else None
                ),
            )
            page.goto(report.as_uri())
            page.wait_for_load_state("load")
            assert page.locator("figure svg").count() == 3
            for selector in (
                "#series-lambda-arm64",
                "#series-workers",
                "#series-fargate-arm",
                "#measured-load",
                "#break-even-0",
                "#bars-lambda-arm64-compute-1",  # capabilities sorted: pay is the second
                "#bars-lambda-arm64-retry_tax-1",
                "#bars-fargate-arm-compute-1",
                "#latency-pay-2",  # its (1, 2] ms bucket
            ):
                box = page.locator(selector).first.bounding_box()
                assert box is not None and box["width"] > 0 and box["height"] > 0, selector
            # the cost line is a drawn path with many points, not an empty group
            assert page.locator("#series-lambda-arm64 path").first.get_attribute("d")
            assert "odd<name>" in page.inner_text("body")  # shown as text
            shot = page.screenshot(full_page=True)
        finally:
            browser.close()
    assert outside == []
    image = Image.open(io.BytesIO(shot)).convert("RGB")
    assert image.height > 900
    colours = image.resize((300, 300)).getcolors(maxcolors=300 * 300)
    assert colours is not None and len(colours) > 50  # plots, not a blank page
