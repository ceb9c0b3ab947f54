"""The Dataset tab's Insight and Generate panels in headless Chromium: statistics of a demo set under the
embedded model's template, the suggested cutoff_len applied to the Train tab in one click, and a tiny
generation started from the panel whose progress shows up live. Screenshot: docs/screenshots/dataset_tools.png.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from browser_support import SHOTS, VIEWPORT, Studio, pick, playwright_or_skip, running_studio, studio_page

pytestmark = pytest.mark.browser

SLOW_MS = 300_000

playwright_or_skip()


@pytest.fixture(scope="module")
def studio() -> Iterator[Studio]:
    with running_studio("ftstudio-tools-") as server:
        yield server


@pytest.fixture()
def page(studio) -> Iterator:
    with studio_page(studio, "#model-load", "visible") as page:
        yield page


def test_insight_and_generate_panels(page, studio):
    page.get_by_role("tab", name="Dataset").click()
    page.wait_for_function("document.querySelector('#data-catalogue').innerText.includes('identity')")

    # Insight: identity under the embedded model's template
    page.get_by_text("Insight", exact=True).click()
    pick(page, "insight-dataset", "identity")
    page.click("#insight-compute")
    page.wait_for_function("document.querySelector('#insight-summary').innerText.includes('Suggested cutoff_len')",
                           timeout=SLOW_MS)
    summary = page.inner_text("#insight-summary")
    assert "84 (84 usable, 0 with problems)" in summary and "en 53, zh 31" in summary
    page.wait_for_selector("#insight-prompt-hist g.mark-rect path, #insight-prompt-hist .mark-rect path",
                           state="attached")
    suggested = int(summary.split("Suggested cutoff_len")[1].split()[0].strip("*"))
    page.click("#insight-apply")
    page.wait_for_function(f"document.querySelector('#insight-applied').innerText.includes('{suggested}')")

    # Generate: two rows from seed topics with the embedded model
    page.get_by_text("Generate synthetic data", exact=True).click()
    page.fill("#gen-topics textarea", "volcanoes; the moon; baking bread")
    for elem, value in (("gen-num-rows", "2"), ("gen-max-new-tokens", "16"), ("gen-temperature", "0.7")):
        box = page.locator(f"#{elem} input").first
        box.fill(value)
        box.press("Tab")
    page.fill("#gen-dataset-name textarea, #gen-dataset-name input", "browser_synth")
    page.locator("#gen-keep-truncated input").check()  # 16 tokens cut most answers: keep them here
    page.click("#gen-start")
    page.wait_for_function("document.querySelector('#gen-status').innerText.includes('generate-')")
    page.wait_for_function("document.querySelector('#gen-status').innerText.includes('1 / 2 rows')"
                           " || document.querySelector('#gen-status').innerText.includes('2 / 2 rows')"
                           " || document.querySelector('#gen-status').innerText.includes('failed')",
                           timeout=SLOW_MS)
    page.wait_for_function("document.querySelector('#gen-status').innerText.match(/finished|failed/)",
                           timeout=SLOW_MS)
    status = page.inner_text("#gen-status")
    assert "finished" in status and "2 / 2 rows" in status, status
    assert "registered as 'browser_synth'" in status
    page.wait_for_function("document.querySelector('#gen-rows').innerText.includes('instruction')")
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(800)
    top, bottom = page.locator("#insight-panel").bounding_box(), page.locator("#gen-panel").bounding_box()
    scroll = page.evaluate("window.scrollY")
    page.screenshot(path=str(SHOTS / "dataset_tools.png"), full_page=True,
                    clip={"x": 0, "y": top["y"] + scroll, "width": VIEWPORT["width"],
                          "height": bottom["y"] + bottom["height"] - top["y"]})
    catalogue = json.loads((studio.datasets / "dataset_info.json").read_text(encoding="utf-8"))
    assert "browser_synth" in catalogue

    page.get_by_role("tab", name="Train").click()
    value = page.input_value("#field-cutoff_len input")
    assert int(float(value)) == suggested
