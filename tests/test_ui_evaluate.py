"""The Evaluate tab in headless Chromium: evaluate a trained run and the base model on held-out questions
(two `ftstudio eval` jobs started from the tab), compare them (metrics table, bar charts, predictions side
by side, best rows), and take docs/screenshots/evaluate.png. The trained run is the session's identity run
(conftest.py), copied into the studio's runs folder."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from browser_support import SHOTS, Studio, playwright_or_skip, running_studio, set_value, studio_page

pytestmark = [pytest.mark.browser, pytest.mark.slow]
EVAL_MS = 600_000  # two model loads and 2 x 6 answers on a busy 2-core machine

playwright_or_skip()


@pytest.fixture(scope="module")
def studio(identity_run) -> Iterator[Studio]:
    def copy_run(server: Studio) -> None:  # the final adapter is what is evaluated
        shutil.copytree(identity_run.path, server.runs / "identity-lora", ignore=shutil.ignore_patterns("checkpoints"))

    with running_studio("ftstudio-eval-browser-", copy_run) as server:
        yield server


@pytest.fixture()
def page(studio) -> Iterator:
    with studio_page(studio) as page:
        yield page


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
    set_value(page, "eval-max_samples", "6")
    set_value(page, "eval-max_new_tokens", "24")
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
