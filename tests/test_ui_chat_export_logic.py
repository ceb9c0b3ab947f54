"""Fast tests of the Chat and Export tabs' plain logic: preference rows and the catalogue, chatbot
messages, the engine cache's adapter bookkeeping, the export report and the API server's guard rails."""

from __future__ import annotations

import json
import shutil
import socket
import threading
from pathlib import Path

import pytest

from app.data.catalogue import load_catalogue
from app.data.formats import load_examples
from app.ui import chat_engines
from app.ui.chat_engines import BASE, EngineCache, message_text, plain_messages, prompt_messages
from app.ui.export_report import default_output, human_size, ollama_name, report_markdown
from app.ui.export_server import ApiServer, ServerError, ServerStatus, api_command, curl_example
from app.ui.preference import (
    COLUMNS,
    Preference,
    PreferenceError,
    count_rows,
    history_pairs,
    preference_row,
    save_preference,
)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture()
def catalogue(tmp_path: Path) -> Path:
    shutil.copy(REPO / "dataset_info.json", tmp_path / "dataset_info.json")
    shutil.copytree(REPO / "data", tmp_path / "data")
    return tmp_path


# -- preference rows ------------------------------------------------------------------------------
def test_preference_row_is_alpaca_with_history():
    pref = Preference("And of Italy?", "Rome.", "Paris.", system="Be brief.",
                      history=[("Capital of France?", "Paris.")])
    assert preference_row(pref) == {"instruction": "And of Italy?", "input": "", "chosen": "Rome.",
                                    "rejected": "Paris.", "system": "Be brief.",
                                    "history": [["Capital of France?", "Paris."]]}


@pytest.mark.parametrize("pref, words", [
    (Preference("", "a", "b"), "no prompt"),
    (Preference("q", "", "b"), "Both sides"),
    (Preference("q", "same", " same "), "identical"),
])
def test_preference_row_refuses_useless_pairs(pref, words):
    with pytest.raises(PreferenceError, match=words):
        preference_row(pref)


def test_preference_row_never_drops_a_system_prompt_silently():
    columns = {"prompt": "q", "chosen": "good", "rejected": "bad"}
    assert preference_row(Preference("p", "a", "b"), columns) == {"q": "p", "good": "a", "bad": "b"}
    with pytest.raises(PreferenceError, match="no 'system' column"):
        preference_row(Preference("p", "a", "b", system="sys"), columns)


def test_history_pairs_skip_system_and_unanswered_turns():
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u1"},
                {"role": "assistant", "content": "a1"}, {"role": "user", "content": "u2"}]
    assert history_pairs(messages) == [("u1", "a1")]


# -- the catalogue --------------------------------------------------------------------------------
def test_first_save_registers_a_ranking_set_and_later_saves_append(catalogue: Path):
    assert count_rows(catalogue, "chat_preferences") is None
    first = save_preference(catalogue, "chat_preferences", Preference("Hi?", "Hello!", "Go away."))
    assert first.created and first.rows == 1
    assert first.path == catalogue / "data" / "chat_preferences.jsonl"
    entry = json.loads((catalogue / "dataset_info.json").read_text())["chat_preferences"]
    assert entry == {"file_name": "data/chat_preferences.jsonl", "formatting": "alpaca", "ranking": True,
                     "columns": COLUMNS}
    second = save_preference(catalogue, "chat_preferences",
                             Preference("More?", "Sure.", "No.", system="Be kind.", history=[("Hi?", "Hello!")]))
    assert not second.created and second.rows == 2 and count_rows(catalogue, "chat_preferences") == 2
    lines = first.path.read_text().splitlines()
    assert [json.loads(line)["instruction"] for line in lines] == ["Hi?", "More?"]

    spec = load_catalogue(catalogue)["chat_preferences"]
    assert spec.stage == "dpo"
    examples = load_examples(spec, "dpo")
    assert examples[1]["prompt"] == [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi?"},
                                     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "More?"}]
    assert examples[1]["chosen"] == [{"role": "assistant", "content": "Sure."}]
    assert examples[1]["rejected"] == [{"role": "assistant", "content": "No."}]


def test_appends_to_an_existing_json_ranking_set_under_its_own_columns(catalogue: Path):
    before = len(json.loads((catalogue / "data" / "preference_demo.json").read_text()))
    saved = save_preference(catalogue, "preference_demo", Preference("Why?", "Because.", "No idea."))
    rows = json.loads((catalogue / "data" / "preference_demo.json").read_text())
    assert saved.rows == before + 1 == len(rows)
    assert rows[-1] == {"instruction": "Why?", "input": "", "chosen": "Because.", "rejected": "No idea."}


@pytest.mark.parametrize("name, words", [("identity", "not an alpaca preference set"),
                                         ("raw_text_demo", "not an alpaca preference set"),
                                         ("../escape", "not usable"), ("", "not usable")])
def test_names_that_cannot_take_preferences(catalogue: Path, name: str, words: str):
    with pytest.raises(PreferenceError, match=words):
        save_preference(catalogue, name, Preference("q", "a", "b"))


def test_concurrent_saves_all_land(catalogue: Path):
    save_preference(catalogue, "votes", Preference("q0", "a", "b"))
    threads = [threading.Thread(target=save_preference, args=(catalogue, "votes", Preference(f"q{i}", "a", "b")))
               for i in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert count_rows(catalogue, "votes") == 9
    assert not list((catalogue / "data").glob(".*.tmp"))


def test_save_creates_a_missing_catalogue(tmp_path: Path):
    saved = save_preference(tmp_path, "prefs", Preference("q", "a", "b"))
    assert saved.created and (tmp_path / "dataset_info.json").is_file() and saved.rows == 1


# -- chat messages and engines --------------------------------------------------------------------
def test_gradio6_message_parts_become_plain_text():
    history = [{"role": "user", "metadata": None, "content": [{"text": "Hi", "type": "text"}], "options": None},
               {"role": "assistant", "content": [{"text": "Hel", "type": "text"}, {"text": "lo", "type": "text"}]},
               {"role": "system", "content": "dropped"}]
    assert plain_messages(history) == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert message_text(None) == "" and message_text("x") == "x"
    assert prompt_messages("  ", [], "q") == [{"role": "user", "content": "q"}]
    assert prompt_messages("sys", [{"role": "user", "content": "a"}], "q")[0] == {"role": "system", "content": "sys"}


class FakeEngine:
    base_name, device = "base", "cpu"

    def __init__(self):
        self.added: list[tuple[str, Path]] = []

    def names(self) -> list[str]:
        return [self.base_name] + [n for n, _ in self.added]

    def add_adapter(self, name: str, path: Path) -> str:
        self.added.append((name, path))
        return name


def test_engine_cache_adds_each_adapter_once_and_reloads_a_retrained_one(tmp_path: Path, monkeypatch):
    run = tmp_path / "lumi"
    (run / "adapter").mkdir(parents=True)
    weights = run / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(b"1")
    cache = EngineCache()
    fake = FakeEngine()
    monkeypatch.setitem(cache._entries, "", chat_engines._Entry(fake))  # type: ignore[arg-type]
    assert cache.loaded(None) and cache.loaded("embedded")
    assert cache.target(None, BASE, None) == "base"
    assert not cache.has_current(None, "lumi", run)
    assert cache.target(None, "lumi", run) == "lumi"
    assert cache.target(None, "lumi", run) == "lumi" and len(fake.added) == 1
    assert cache.has_current(None, "lumi", run)
    import os

    os.utime(weights, (weights.stat().st_atime, weights.stat().st_mtime + 10))  # trained again
    assert cache.target(None, "lumi", run) == "lumi#2" and len(fake.added) == 2
    assert "lumi" in cache.describe(None)


# -- export report and API server -----------------------------------------------------------------
GGUF_REPORT = {
    "name": "Lumi Run", "format": "gguf", "quant": "q8_0", "output_dir": "/x/out", "passed": True,
    "files": [{"path": "lumi-q8_0.gguf", "bytes": 145_000_000}, {"path": "Modelfile", "bytes": 600}],
    "gguf": {"path": "/x/out/lumi-q8_0.gguf"}, "modelfile": "/x/out/Modelfile",
    "fidelity": {"agreement": 0.9876, "target": 0.95, "ppl_reference": 12.5, "ppl_gguf": 12.75,
                 "ppl_change_pct": 2.0, "passed": True, "backend": "llama_cpp", "n_tokens": 457},
    "timings_s": {"merge": 1.25, "gguf": 5.0},
}


def test_gguf_report_shows_files_fidelity_and_how_to_run():
    text = report_markdown(GGUF_REPORT)
    assert "✓ Exported: Lumi Run → GGUF q8_0" in text
    assert "| `lumi-q8_0.gguf` | 138.3 MB |" in text and "**total**" in text
    assert "98.76%" in text and "12.5 → 12.75" in text and "+2.00%" in text and "✓ pass" in text
    assert "ollama create lumi-run -f /x/out/Modelfile" in text and "llama-cli -m /x/out/lumi-q8_0.gguf" in text


def test_failed_report_keeps_the_numbers_and_the_reason():
    failed = GGUF_REPORT | {"passed": False, "fidelity": GGUF_REPORT["fidelity"] | {"passed": False}}
    text = report_markdown(failed, error="GGUF q8_0 failed its fidelity check")
    assert "✗ Export failed" in text and "> GGUF q8_0 failed" in text and "✗ fail" in text
    assert "ollama create" not in text


def test_small_helpers(tmp_path: Path):
    assert human_size(512) == "512 B" and human_size(2048) == "2.0 KB" and human_size(3 * 1024**3) == "3.0 GB"
    assert ollama_name("My Run/2") == "my-run-2"
    assert default_output(tmp_path, "lumi", "gguf", "q8_0") == str(tmp_path / "exports" / "lumi-gguf-q8_0")
    assert default_output(tmp_path, "lumi", "safetensors", "q8_0").endswith("lumi-safetensors")


def test_api_command_and_curl_never_carry_the_key():
    cmd = api_command("py", None, [("lumi", "/runs/lumi")], "127.0.0.1", 8001)
    assert cmd == ["py", "-m", "app.cli", "api", "--host", "127.0.0.1", "--port", "8001",
                   "--adapter", "lumi=/runs/lumi"]
    curl = curl_example(ServerStatus("ready", 1, "0.0.0.0", 8001, ["base", "lumi"], has_key=True), "lumi")
    assert "http://127.0.0.1:8001/v1/chat/completions" in curl and "$FTSTUDIO_API_KEY" in curl
    assert '"model": "lumi"' in curl


def test_api_server_refuses_unsafe_or_busy_starts(tmp_path: Path):
    server = ApiServer(tmp_path / ".api-server")
    assert server.status().state == "stopped" and not server.stop()
    with pytest.raises(ServerError, match="needs an API key"):
        server.start(None, [], host="0.0.0.0", port=8000)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(ServerError, match="in use"):
            server.start(None, [], port=busy.getsockname()[1])
    assert not (tmp_path / ".api-server" / "server.json").exists()
