"""Click through the web studio in headless Chromium: tabs, language, dataset upload, a live training run.

The UI runs as `python -m app.cli webui` in a subprocess on a free port, on a copy of the repo's
catalogue and a fresh runs folder; restarting that process must bring every run and its whole
curve back. Screenshots of the Model, Dataset and Train tabs go to docs/screenshots/ (used by the
README); tests/test_ui_chat_export.py takes the Chat and Export ones.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest
from browser_support import SHOTS, VIEWPORT, Studio, chromium_browser, playwright_or_skip, running_studio, set_value

pytestmark = pytest.mark.browser

SLOW_MS = 240_000  # a busy 2-core machine: model loading and steps take their time

playwright_or_skip()


@pytest.fixture(scope="module")
def studio() -> Iterator[Studio]:
    with running_studio("ftstudio-browser-") as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with chromium_browser() as chromium:
        yield chromium


def open_studio(browser, studio: Studio):
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(60_000)
    page.goto(studio.url, timeout=120_000)
    page.wait_for_selector("#tab-model", state="attached", timeout=120_000)
    page.wait_for_selector("#model-load", state="visible", timeout=120_000)
    return page


@pytest.fixture()
def page(browser, studio) -> Iterator:
    page = open_studio(browser, studio)
    yield page
    page.close()


def tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def shoot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(800)  # let plots and tables finish drawing
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def plot_points(page, elem_id: str) -> int:
    """Points of the longest line drawn in a gr.LinePlot (Vega draws each series as one path)."""
    return page.evaluate(
        """(id) => Math.max(0, ...Array.from(document.querySelectorAll(`#${id} g.mark-line path`))
              .map(p => ((p.getAttribute('d') || '').match(/[ML]/g) || []).length))""", elem_id)


def set_field(page, name: str, value: str) -> None:
    set_value(page, f"field-{name}", value)


# -- tests ------------------------------------------------------------------------------------
def test_tabs_render_and_language_switch(page):
    page.get_by_label("Hugging Face id").check()  # offline: a readable message, never a traceback
    page.fill("#model-path textarea", "nobody/no-such-model")
    page.click("#model-load")
    page.wait_for_function("document.querySelector('#model-info').innerText.includes('nobody/no-such-model')")
    assert "⚠" in page.inner_text("#model-info") and "Traceback" not in page.inner_text("#model-info")
    page.get_by_label("Embedded default").check()
    page.click("#model-load")
    page.wait_for_function("document.querySelector('#model-info').innerText.includes('LlamaForCausalLM')",
                           timeout=SLOW_MS)
    assert "Trainable" in page.inner_text("#model-info")
    assert "im_start" in page.inner_text("#model-template")
    assert "CPU" in page.inner_text("#model-hardware") or "GPU" in page.inner_text("#model-hardware")
    shoot(page, "model")

    tab(page, "Dataset")
    page.wait_for_function("document.querySelector('#data-catalogue').innerText.includes('raw_text_demo')")
    tab(page, "Train")
    page.wait_for_selector("#group-basic")
    page.wait_for_function("document.querySelector('#train-memory').innerText.includes('total')")
    for name in ("Chat", "Export"):
        tab(page, name)

    page.click("#studio-lang input")
    page.get_by_role("option", name="中文").click()
    page.get_by_role("tab", name="训练").wait_for()
    tab(page, "模型")
    page.wait_for_function("document.body.innerText.includes('模型来源')")
    tab(page, "训练")
    page.wait_for_function("document.body.innerText.includes('学习率')")
    assert page.get_by_role("tab", name="数据集").is_visible()


def test_dataset_upload_validates_and_registers(page, studio):
    tmp_path = studio.root
    tab(page, "Dataset")
    page.wait_for_function("document.querySelector('#data-catalogue').innerText.includes('identity')")
    bad = tmp_path / "broken_qa.jsonl"
    bad.write_text(json.dumps({"instruction": "Hi", "output": "Hello"}) + "\n"
                   + json.dumps({"instruction": "No answer here"}) + "\n", encoding="utf-8")
    page.set_input_files("#data-file input[type=file]", str(bad))
    page.wait_for_function("document.querySelector('#data-name textarea, #data-name input').value === 'broken_qa'")
    page.click("#data-validate")
    page.wait_for_function("document.querySelector('#data-result textarea').value.includes('row 2')")
    result = page.input_value("#data-result textarea")
    assert "broken_qa.jsonl, row 2" in result and "'output'" in result

    good = tmp_path / "capitals.csv"
    good.write_text("question,answer\nCapital of France?,Paris\nCapital of Japan?,Tokyo\n", encoding="utf-8")
    page.click("#data-file button[aria-label=Clear]")
    page.set_input_files("#data-file input[type=file]", str(good))
    page.wait_for_function("document.querySelector('#data-name textarea, #data-name input').value === 'capitals'")
    page.click("#data-register")
    page.wait_for_function("document.querySelector('#data-result textarea').value.includes('capitals')")
    assert "✓" in page.input_value("#data-result textarea")
    page.wait_for_function("document.querySelector('#data-catalogue').innerText.includes('capitals')")
    catalogue = json.loads((studio.datasets / "dataset_info.json").read_text(encoding="utf-8"))
    assert catalogue["capitals"]["columns"] == {"prompt": "question", "response": "answer"}
    assert (studio.datasets / catalogue["capitals"]["file_name"]).is_file()
    shoot(page, "dataset")


def test_train_live_curve_stop_and_restart(browser, studio):
    page = open_studio(browser, studio)
    tab(page, "Train")
    page.wait_for_selector("#group-basic")
    for name, value in (("max_steps", "400"), ("per_device_train_batch_size", "2"), ("cutoff_len", "128"),
                        ("gradient_accumulation_steps", "1"), ("learning_rate", "0.0005")):
        set_field(page, name, value)
    page.get_by_text("Advanced", exact=True).click()
    set_field(page, "logging_steps", "1")
    set_field(page, "output_dir", "browser-run")
    page.click("#train-preview")
    page.wait_for_function("document.querySelector('#train-command textarea').value.includes('--max_steps 400')")
    page.click("#train-start")
    page.wait_for_function("document.querySelector('#train-runs').innerText.includes('browser-run')")

    page.wait_for_function("(n) => document.querySelectorAll('#train-loss g.mark-line path').length > 0",
                           arg=0, timeout=SLOW_MS)
    page.wait_for_function(
        """() => Math.max(0, ...Array.from(document.querySelectorAll('#train-loss g.mark-line path'))
             .map(p => ((p.getAttribute('d') || '').match(/[ML]/g) || []).length)) >= 3""", timeout=SLOW_MS)
    first = plot_points(page, "train-loss")
    page.wait_for_function(
        """(n) => Math.max(0, ...Array.from(document.querySelectorAll('#train-loss g.mark-line path'))
             .map(p => ((p.getAttribute('d') || '').match(/[ML]/g) || []).length)) > n""", arg=max(first, 7),
        timeout=SLOW_MS)  # it grows while training (and a few more steps make a better screenshot)
    assert "step" in page.inner_text("#train-status")

    page.click("#train-stop")
    page.wait_for_function("document.querySelector('#train-status').innerText.includes('stopped')",
                           timeout=SLOW_MS)
    page.wait_for_timeout(1500)
    shown = plot_points(page, "train-loss")
    events = [json.loads(line) for line in (studio.runs / "browser-run" / "events.jsonl").read_text().splitlines()]
    steps = {e["step"] for e in events if e["kind"] == "log" and e.get("loss") is not None and not e.get("final")}
    assert shown == len(steps) > first
    assert "stopped" in page.inner_text("#train-runs")
    if "OMP_WAIT_POLICY" not in os.environ:  # a user's own policy wins, and the worker then says only that
        # the studio told the worker how busy the machine was before the click (app/train/threads.py)
        assert "before the studio started this run" in (studio.runs / "browser-run" / "worker.log").read_text()
    shoot(page, "train")
    page.close()

    studio.stop()  # a UI restart: everything must come back from the run folder
    studio.start()
    page = open_studio(browser, studio)
    tab(page, "Train")
    page.wait_for_function("document.querySelector('#train-runs').innerText.includes('browser-run')")
    page.wait_for_function("document.querySelector('#train-status').innerText.includes('stopped')")
    page.wait_for_function(
        """(n) => Math.max(0, ...Array.from(document.querySelectorAll('#train-loss g.mark-line path'))
             .map(p => ((p.getAttribute('d') || '').match(/[ML]/g) || []).length)) === n""", arg=len(steps))

    page.get_by_text("Compare runs", exact=True).click()  # overlay: one line per selected run
    page.click("#train-compare input")
    page.get_by_role("option", name="browser-run").click()
    page.wait_for_function(
        """(n) => Array.from(document.querySelectorAll('#train-compare-plot g.mark-line path'))
             .some(p => ((p.getAttribute('d') || '').match(/[ML]/g) || []).length === n)""", arg=len(steps))
    page.close()


def test_job_yaml_save_and_load(page, studio):
    tab(page, "Train")
    page.wait_for_selector("#group-basic")
    set_field(page, "max_steps", "12")
    page.click("#train-save")
    link = page.locator("#train-saved a[download]")
    link.wait_for()
    saved = page.request.get(link.get_attribute("href")).text()
    assert "max_steps: 12" in saved and "stage: sft" in saved

    edited = studio.root / "dpo_job.yaml"
    edited.write_text(saved.replace("max_steps: 12", "max_steps: 33").replace("stage: sft", "stage: dpo")
                      .replace("dataset: identity", "dataset: preference_demo"), encoding="utf-8")
    with page.expect_file_chooser() as chooser:
        page.click("#train-load")
    chooser.value.set_files(str(edited))
    page.wait_for_function("document.querySelector('#train-output').innerText.includes('dpo_job.yaml')")
    assert page.input_value("#field-max_steps input") == "33"
    assert page.input_value("#field-stage input") == "dpo"
    page.wait_for_function("document.querySelector('#field-dataset').innerText.includes('preference_demo')")


def test_an_idle_page_asks_for_few_animation_frames(browser, studio):
    """Gradio's status trackers keep a 60-frames-a-second stopwatch loop running on an idle page (0.07-0.10 of a
    core in Chromium, taken from training); the studio's page script (app/ui/idle.py) slows that loop to 4 Hz."""
    page = browser.new_page(viewport=VIEWPORT)
    page.add_init_script("""(() => { const raf = window.requestAnimationFrame.bind(window); window.__frames = 0;
        window.requestAnimationFrame = (cb) => { window.__frames++; return raf(cb); }; })()""")  # runs first
    page.goto(studio.url, timeout=120_000)
    page.wait_for_selector("#model-load", state="visible", timeout=120_000)
    tab(page, "Train")
    page.wait_for_selector("#group-basic")
    rates = []
    for _ in range(10):  # the page's first load events animate their loaders for a while: wait for it to settle
        before = page.evaluate("window.__frames")
        page.wait_for_timeout(3000)
        rates.append((page.evaluate("window.__frames") - before) / 3)
        if rates[-1] < 15:
            break
    assert rates[-1] < 15, f"animation frames a second on an idle page, 3 s apart: {rates}"
    assert page.locator("script[data-ftstudio=frames]").count() == 1
    page.close()
