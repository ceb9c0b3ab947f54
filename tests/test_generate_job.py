"""Generation jobs end to end on the embedded model: spawned by the job manager as `data generate`, rows
valid and de-duplicated and registered in the catalogue; Stop keeps the rows made so far; and the
endpoint path against the studio's own OpenAI-compatible API, started as a real process on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from serving_support import api_process

from app.config import GenerateConfig
from app.data.catalogue import load_catalogue
from app.data.formats import load_examples
from app.data.synth import dedupe
from app.jobs.manager import JobManager

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
TOPICS = "volcanoes; the moon; baking bread; rivers; chess"


@pytest.fixture()
def catalogue(tmp_path) -> Path:
    shutil.copy(REPO / "dataset_info.json", tmp_path / "dataset_info.json")
    shutil.copytree(REPO / "data", tmp_path / "data")
    return tmp_path


def wait_for(run, states: tuple[str, ...], manager: JobManager, timeout_s: float = 600) -> dict:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        manager.refresh()
        state = run.read_state()
        if state.get("state") in states:
            return state
        time.sleep(0.5)
    raise AssertionError(f"run stayed {run.read_state()} ({run.tail_log()[-2000:]})")


def check_registered(catalogue: Path, name: str, rows_wanted: int | None = None) -> list[dict]:
    spec = load_catalogue(catalogue)[name]
    rows = json.loads(spec.path.read_text(encoding="utf-8"))
    examples = load_examples(spec, "sft")  # the catalogue's own validation
    assert len(examples) == len(rows) >= 1
    if rows_wanted is not None:
        assert len(rows) == rows_wanted
    assert dedupe([r["instruction"] for r in rows]) == list(range(len(rows)))  # no duplicates left
    assert all(r["instruction"].strip() and r["output"].strip() for r in rows)
    return rows


def test_manager_runs_a_generation_and_registers_it(catalogue, tmp_path):
    manager = JobManager(tmp_path / "runs")
    config = GenerateConfig.from_dict({"topics": TOPICS, "num_rows": 2, "max_new_tokens": 24,
                                       "keep_truncated": True, "system": "You are a helpful assistant.",
                                       "dataset_name": "synth_small", "dataset_dir": str(catalogue)})
    run = manager.submit(config)
    assert run.kind == "data generate"
    state = wait_for(run, ("finished", "failed", "stopped"), manager)
    assert state["state"] == "finished", run.tail_log()
    rows = check_registered(catalogue, "synth_small", rows_wanted=2)
    assert all(r["system"] == "You are a helpful assistant." for r in rows)
    events = run.events.read_all()
    progress = [e for e in events if e["kind"] == "progress"]
    assert progress[-1]["step"] == 2 and progress[-1]["total_steps"] == 2
    assert any(e.get("name") == "registered" for e in events)
    summary = next(s for s in manager.summaries() if s.name == run.name)
    assert summary.kind == "data generate" and summary.dataset == "synth_small"


def test_stop_keeps_the_rows_made_so_far(catalogue, tmp_path):
    manager = JobManager(tmp_path / "runs")
    config = GenerateConfig.from_dict({"topics": TOPICS, "num_rows": 30, "max_new_tokens": 16,
                                       "keep_truncated": True, "dataset_name": "synth_stopped",
                                       "dataset_dir": str(catalogue)})
    run = manager.submit(config)
    deadline = time.time() + 600
    while not any(e["kind"] == "progress" and e["step"] >= 1 for e in run.events.read_all()):
        assert time.time() < deadline and run.read_state().get("state") in ("queued", "running"), run.tail_log()
        manager.refresh()
        time.sleep(0.5)
    manager.stop(run.name, wait=True)
    assert run.read_state()["state"] == "stopped", run.tail_log()
    rows = check_registered(catalogue, "synth_stopped")
    assert len(rows) < 30


@pytest.fixture()
def api_server(tmp_path) -> Iterator[str]:
    """`python -m app.cli api` on a free loopback port with a key; ended (its whole group) afterwards."""
    with api_process([], tmp_path / "api.log", {"HF_HUB_OFFLINE": "1", "FTSTUDIO_API_KEY": "sk-synth-test"}) as url:
        yield f"{url}/v1"


def generate_cli(args: list[str], key: str) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(REPO), "SYNTH_TEST_KEY": key}
    return subprocess.run([sys.executable, "-m", "app.cli", "data", "generate", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


def test_endpoint_generation_against_the_studio_api(api_server, catalogue, tmp_path):
    base = ["--topics", TOPICS, "--num_rows", "2", "--max_new_tokens", "24", "--keep_truncated", "true",
            "--api_base", api_server, "--api_model", "SmolLM2-135M-Instruct", "--api_key_env", "SYNTH_TEST_KEY",
            "--dataset_dir", str(catalogue)]
    refused = tmp_path / "runs" / "refused"
    done = generate_cli(base + ["--dataset_name", "synth_refused", "--output_dir", str(refused)], "wrong-key")
    assert done.returncode == 1
    state = json.loads((refused / "state.json").read_text())
    assert state["state"] == "failed" and "refused the key in $SYNTH_TEST_KEY" in state["error"]
    assert "wrong-key" not in (refused / "generate.yaml").read_text()

    run = tmp_path / "runs" / "api"
    done = generate_cli(base + ["--dataset_name", "synth_api", "--output_dir", str(run)], "sk-synth-test")
    assert done.returncode == 0, done.stderr[-3000:]
    check_registered(catalogue, "synth_api", rows_wanted=2)
    assert "endpoint http://127.0.0.1" in (run / "events.jsonl").read_text()
