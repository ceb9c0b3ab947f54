"""Click through the Chat and Export tabs in headless Chromium against a real `ftstudio webui` process.

A "finished run" is faked in seconds: a LoRA with random weights on the embedded model, saved with the
tokenizer into <runs>/tiny-lora/adapter/, plus job.yaml and state.json {"state": "finished"}.
Screenshots go to docs/screenshots/chat.png and export.png (used by the README).
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_support import SHOTS, VIEWPORT, Studio, chromium_browser, free_port, playwright_or_skip

pytestmark = pytest.mark.browser

SLOW_MS = 300_000  # 2 busy cores: loading, generating and exporting take their time
RUN = "tiny-lora"
PROMPT = "What is the capital of France?"

sync_api = playwright_or_skip()


def make_finished_run(runs: Path, name: str, base_model: str | None = None) -> Path:
    """A run folder as a finished training leaves it, with a random (output-changing) LoRA adapter."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from app.config import JobConfig
    from app.models.source import resolve_model_path
    from app.train.runfolder import RunFolder

    base_path = resolve_model_path(None)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))
    run = RunFolder(runs / name)
    run.create(JobConfig(output_dir=str(run.path), model_name_or_path=base_model))
    model.save_pretrained(run.adapter)
    AutoTokenizer.from_pretrained(base_path).save_pretrained(run.adapter)
    run.write_state(state="finished", exit_code=0)
    return run.path


@pytest.fixture(scope="module")
def studio(tmp_path_factory) -> Iterator[Studio]:
    server = Studio(tmp_path_factory.mktemp("studio-chat"))
    make_finished_run(server.runs, RUN)
    mismatched = make_finished_run(server.runs, "other-base", base_model="acme/other-7b")
    config = mismatched / "adapter" / "adapter_config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"base_model_name_or_path": "acme/other-7b"}))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with chromium_browser() as chromium:
        yield chromium


@pytest.fixture()
def page(browser, studio) -> Iterator:
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(60_000)
    page.goto(studio.url, timeout=120_000)
    page.wait_for_selector("#tab-model", state="attached", timeout=120_000)
    yield page
    page.close()


def tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def shoot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(800)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def pick(page, elem_id: str, option: str) -> None:
    page.click(f"#{elem_id} input")
    page.locator(f"#{elem_id}").get_by_role("option", name=option).click()


def set_number(page, elem_id: str, value: float) -> None:
    """Type into a slider's number box and wait until the slider itself took the value."""
    box = page.locator(f"#{elem_id} input[type=number]")
    for _ in range(5):
        box.fill(str(value))
        box.press("Tab")
        try:
            page.wait_for_function("([id, v]) => Number(document.querySelector(`#${id} input[type=range]`).value)"
                                   " === v", arg=[elem_id, value], timeout=5_000)
            return
        except sync_api.TimeoutError:
            continue  # the page was still wiring up and re-rendered the slider: type again
    raise AssertionError(f"slider {elem_id} did not take {value}")


def open_chat(page, max_new_tokens: int = 24) -> None:
    tab(page, "Chat")
    page.wait_for_function("document.querySelector('#chat-base').innerText.includes('Base model')")
    page.get_by_text("System prompt and sampling").click()
    set_number(page, "chat-temperature", 0)  # greedy: the same reply every time
    set_number(page, "chat-max-new", max_new_tokens)


def send(page, text: str) -> str:
    """Send `text`, wait for the turn to end; returns the status line."""
    page.fill("#chat-input textarea", text)
    page.click("#chat-send")
    page.wait_for_function(
        """() => { const s = document.querySelector('#chat-status').innerText;
                   return s.includes('⚠') || (s.includes('✓') && !s.includes('…')); }""", timeout=SLOW_MS)
    return page.inner_text("#chat-status")


def bot_text(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} [data-testid=bot]").last.inner_text().strip()


# -- tests ------------------------------------------------------------------------------------
def test_chat_streams_from_the_base_then_an_adapter(page):
    open_chat(page)
    page.evaluate("""() => { window.__lengths = []; const root = document.querySelector('#chat-a');
        new MutationObserver(() => { const bots = root.querySelectorAll('[data-testid=bot]');
            if (bots.length) window.__lengths.push(bots[bots.length - 1].innerText.length); })
          .observe(root, {subtree: true, childList: true, characterData: true}); }""")
    status = send(page, PROMPT)
    assert "✓ SmolLM2-135M-Instruct" in status, status
    assert "Paris" in bot_text(page, "chat-a")
    lengths = sorted(set(page.evaluate("window.__lengths")) - {0})
    assert len(lengths) >= 3, f"the reply did not arrive in pieces: {lengths}"  # streamed, not all at once

    pick(page, "chat-model", RUN)
    page.click("#chat-clear")
    status = send(page, PROMPT)
    assert f"✓ {RUN}" in status, status
    assert bot_text(page, "chat-a")
    page.wait_for_function(f"document.querySelector('#chat-base').innerText.includes('adapters loaded: {RUN}')")


def test_adapter_for_another_base_is_a_message_not_a_traceback(page):
    open_chat(page)
    pick(page, "chat-model", "other-base")
    status = send(page, "Hello")
    assert "⚠" in status and "acme/other-7b" in status and "Traceback" not in status
    assert page.input_value("#chat-input textarea") == "Hello"  # the failed turn is handed back
    assert page.locator("#chat-a [data-testid=bot]").count() == 0


def test_side_by_side_verdict_writes_a_preference_row(page, studio):
    open_chat(page)
    page.click("#chat-compare input")
    page.wait_for_selector("#chat-model-b", state="visible")
    pick(page, "chat-model-b", RUN)
    status = send(page, PROMPT)
    assert "✓ SmolLM2-135M-Instruct" in status and f"✓ {RUN}" in status, status
    left, right = bot_text(page, "chat-a"), bot_text(page, "chat-b")
    assert left and right and left != right, status
    assert "no rows yet" in page.inner_text("#chat-pref-status")
    shoot(page, "chat")

    page.click("#chat-left-better")
    page.wait_for_function("document.querySelector('#chat-pref-status').innerText.includes('rows saved: 1')")
    catalogue = json.loads((studio.datasets / "dataset_info.json").read_text(encoding="utf-8"))
    entry = catalogue["chat_preferences"]
    assert entry["ranking"] is True and entry["formatting"] == "alpaca"
    assert {"prompt", "query", "chosen", "rejected"} <= set(entry["columns"])
    rows = [json.loads(line) for line in (studio.datasets / entry["file_name"]).read_text().splitlines()]
    assert rows == [{"instruction": PROMPT, "input": "", "chosen": left, "rejected": right, "system": "",
                     "history": []}]
    page.click("#chat-left-better")  # one verdict per turn
    page.wait_for_function("document.querySelector('#chat-pref-status').innerText.includes('already saved')")
    assert len((studio.datasets / entry["file_name"]).read_text().splitlines()) == 1

    from app.data.catalogue import load_catalogue
    from app.data.formats import load_examples

    spec = load_catalogue(studio.datasets)["chat_preferences"]
    assert load_examples(spec, "dpo")[0]["chosen"] == [{"role": "assistant", "content": left}]


def test_export_merged_safetensors_shows_the_report(page, studio):
    tab(page, "Export")
    page.wait_for_function("document.querySelector('#export-run input').value !== ''")
    pick(page, "export-run", RUN)
    page.wait_for_function("document.querySelector('#export-output input, #export-output textarea')"
                           f".value.endsWith('{RUN}-safetensors')")
    page.click("#export-start")
    page.wait_for_function("document.querySelector('#export-report').innerText.includes('Export')",
                           timeout=SLOW_MS)
    report = page.inner_text("#export-report")
    assert f"✓ Exported: {RUN} → SAFETENSORS" in report, report
    assert "model.safetensors" in report and "MB" in report and "ftstudio chat --model" in report
    out = studio.root / "exports" / f"{RUN}-safetensors"
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()


def test_export_gguf_f16_reports_agreement(page, studio):
    tab(page, "Export")
    pick(page, "export-run", RUN)
    page.get_by_test_id("gguf-radio-label").click()
    page.wait_for_selector("#export-quant", state="visible")
    page.wait_for_function("document.querySelector('#export-output input, #export-output textarea')"
                           f".value.endsWith('{RUN}-gguf-f16')")
    page.click("#export-start")
    page.wait_for_function("document.querySelector('#export-report').innerText.includes('Export')",
                           timeout=SLOW_MS)
    report = page.inner_text("#export-report")
    assert f"✓ Exported: {RUN} → GGUF f16" in report, report
    assert "top-1 agreement" in report and "✓ pass" in report and "Modelfile" in report
    assert f"ollama create {RUN} -f" in report and "llama-cli -m" in report
    assert (studio.root / "exports" / f"{RUN}-gguf-f16" / f"{RUN}-f16.gguf").is_file()
    shoot(page, "export")


def test_api_server_starts_serves_and_stops(page, studio):
    tab(page, "Export")
    pick(page, "api-adapters", RUN)
    port = free_port()
    page.locator("#api-port input").fill(str(port))
    page.fill("#api-key input", "test-key")
    page.click("#api-start")
    page.wait_for_function("document.querySelector('#api-status').innerText.includes('Serving')", timeout=SLOW_MS)
    status = page.inner_text("#api-status")
    assert f"http://127.0.0.1:{port}/v1" in status and "curl" in status and "test-key" not in status
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models",
                                     headers={"Authorization": "Bearer test-key"})
    with urllib.request.urlopen(request, timeout=10) as response:
        names = [m["id"] for m in json.loads(response.read())["data"]]
    assert RUN in names
    pid = json.loads((studio.runs / ".api-server" / "server.json").read_text())["pid"]
    page.click("#api-stop")
    page.wait_for_function("document.querySelector('#api-status').innerText.includes('Not running')",
                           timeout=60_000)
    deadline = time.time() + 20
    while time.time() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.2)
    assert not Path(f"/proc/{pid}").exists()
