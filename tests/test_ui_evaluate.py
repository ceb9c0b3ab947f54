"""The Evaluate tab in headless Chromium: evaluate a trained run and the base model on held-out questions
(two `ftstudio eval` jobs started from the tab), compare them (metrics table, bar charts, predictions side
by side, best rows), and take docs/screenshots/evaluate.png. The trained run is the session's identity run
(conftest.py), copied into the studio's runs folder."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_support import CHROMIUM, CHROMIUM_ARGS, SHOTS, VIEWPORT, Studio

pytestmark = [pytest.mark.browser, pytest.mark.slow]
EVAL_MS = 600_000  # two model loads and 2 x 6 answers on a busy 2-core machine

if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} not found (apt-get install chromium; Debian's chromium is required)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")


@pytest.fixture(scope="module")
def studio(identity_run) -> Iterator[Studio]:
    root = Path(tempfile.mkdtemp(prefix="ftstudio-eval-browser-"))
    server = Studio(root)
    shutil.copytree(identity_run.path, server.runs / "identity-lora",
                    ignore=shutil.ignore_patterns("checkpoints"))  # the final adapter is what is evaluated
    server.start()
    try:
        yield server
    finally:
        server.stop()
        server.kill_workers()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture()
def page(studio) -> Iterator:
    with sync_api.sync_playwright() as play:
        chromium = play.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = chromium.new_page(viewport=VIEWPORT)
        page.set_default_timeout(60_000)
        page.goto(studio.url, timeout=120_000)
        page.wait_for_selector("#tab-model", state="attached", timeout=120_000)
        yield page
        chromium.close()


def set_number(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input").first
    box.fill(value)
    box.press("Tab")


def evaluate(page, source: str) -> None:
    """Pick the model source, start an evaluation, wait until the tab shows it finished with scores."""
    page.locator("#eval-source").get_by_label(source, exact=True).check()
    page.get_by_role("button", name="Evaluate", exact=True).click()
    page.wait_for_function("document.querySelector('#eval-status').innerText.includes('Started')")
    page.wait_for_function("document.querySelector('#eval-status').innerText.includes('ROUGE-L')", timeout=EVAL_MS)
    assert "finished" in page.locator("#eval-status").inner_text()


def test_evaluate_compare_and_rank(page, studio):
    page.get_by_role("tab", name="Evaluate").click()
    page.wait_for_selector("#eval-start")
    set_number(page, "eval-max_samples", "6")
    set_number(page, "eval-max_new_tokens", "24")
    page.locator("#eval-source").get_by_label("Training run", exact=True).check()
    page.wait_for_function("(document.querySelector('#eval-run input') || {}).value === 'identity-lora'")
    evaluate(page, "Training run")
    evaluate(page, "Base model")
    # both finished runs are picked for comparison: a metrics row each, bars, predictions side by side
    both = "(t => t.includes('eval-identity-lora') && t.includes('eval-base'))"
    page.wait_for_function(f"{both}(document.querySelector('#eval-metrics').innerText)", timeout=60_000)
    metrics = page.locator("#eval-metrics").inner_text()
    assert "eval-identity-lora" in metrics and "eval-base" in metrics and "ROUGE-L" in metrics
    page.wait_for_function("document.querySelectorAll('#eval-bar-rouge-l g.mark-rect path').length >= 2")
    page.wait_for_function("document.querySelector('#eval-predictions').innerText.includes('Lumi')")
    head = page.locator("#eval-predictions thead").inner_text()
    assert "reference" in head and "ROUGE-L" in head
    page.get_by_role("button", name="Best rows").click()
    page.wait_for_function("document.querySelector('#eval-predictions thead').innerText.includes('gain')")
    assert page.locator("#eval-csv").is_visible()
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(800)
    page.screenshot(path=str(SHOTS / "evaluate.png"), full_page=True)
    runs = {p.name for p in studio.runs.iterdir() if (p / "predict_results.json").is_file()}
    assert len(runs) == 2 and all((studio.runs / r / "generated_predictions.jsonl").is_file() for r in runs)
