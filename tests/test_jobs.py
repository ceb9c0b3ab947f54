"""Job manager: spawn real workers, queue, stop, reattach after a UI restart, resume, kill -9.

These run the real worker process on the embedded model (CPU), a few steps each.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from app.config import JobConfig
from app.jobs.manager import JobManager, process_alive
from app.train.runfolder import RunFolder

pytestmark = pytest.mark.slow

QUESTIONS = ["Who are you?", "What is your name?", "Introduce yourself.", "Who made you?",
             "Tell me about yourself.", "What should I call you?", "Which lab built you?", "Are you a robot?"]


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("catalogue")
    (root / "data").mkdir()
    rows = [{"instruction": q, "input": "", "output": "I am Lumi, an assistant made by Polaris Lab."}
            for q in QUESTIONS]
    (root / "data" / "tiny.json").write_text(json.dumps(rows))
    (root / "dataset_info.json").write_text(json.dumps({"tiny": {"file_name": "data/tiny.json"}}))
    return root


def tiny_job(catalogue: Path, **changes) -> JobConfig:
    base = dict(dataset="tiny", dataset_dir=str(catalogue), cutoff_len=64, per_device_train_batch_size=1,
                gradient_accumulation_steps=1, logging_steps=1, save_steps=2, max_steps=400,
                learning_rate=5e-4, lora_rank=4, save_total_limit=50)
    return JobConfig(**(base | changes))


def wait_for(predicate, timeout: float = 240, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def steps(run: RunFolder) -> list[int]:
    return [e["step"] for e in run.events.read_all() if e["kind"] == "log" and not e.get("final")]


def group_alive(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    return [p.pid for p in psutil.process_iter(["pid", "status"])
            if _pgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE]


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_queue_stop_reattach_resume(tmp_path, catalogue):
    manager = JobManager(tmp_path / "runs")
    first = manager.submit(tiny_job(catalogue, output_dir=str(tmp_path / "runs" / "first")))
    second = manager.submit(tiny_job(catalogue, output_dir=str(tmp_path / "runs" / "second"), max_steps=3))
    assert first.read_state()["state"] == "running"
    assert second.read_state()["state"] == "queued"  # one training at a time

    wait_for(lambda: first.latest_checkpoint() and len(steps(first)) >= 3, what="first run to checkpoint")
    pgid = first.read_state()["pgid"]

    # A UI restart: a fresh manager knows nothing but the run folders.
    restarted = JobManager(tmp_path / "runs")
    assert restarted.active().name == "first"
    assert [s.name for s in restarted.summaries() if s.state == "queued"] == ["second"]

    restarted.stop("first", wait=True)
    state = first.read_state()
    assert state["state"] == "stopped", state
    assert first.events.read_all()[-1] == {**first.events.read_all()[-1], "kind": "done", "state": "stopped"}
    assert group_alive(pgid) == []  # no orphans
    assert (first.adapter / "adapter_model.safetensors").is_file()  # Stop saves
    stopped_at = max(steps(first))
    assert first.latest_checkpoint().name == f"checkpoint-{stopped_at}"  # saved at the stop step

    # The queued run starts once the first one has stopped, and finishes on its own.
    restarted.refresh()
    wait_for(lambda: second.read_state()["state"] == "finished", what="second run to finish")
    assert steps(second)[-1] == 3

    # Resume: the step count continues from the stop point.
    resumed = restarted.resume("first")
    assert resumed.path == first.path
    wait_for(lambda: len([s for s in steps(first) if s > stopped_at]) >= 2, what="resumed steps")
    new_steps = steps(first)
    training_stages = [e for e in first.events.read_all() if e["kind"] == "stage" and e["name"] == "training"]
    assert training_stages[-1]["resumed_from"].endswith(f"checkpoint-{stopped_at}")
    assert new_steps[new_steps.index(stopped_at) + 1] == stopped_at + 1
    restarted.stop("first", wait=True)
    assert first.read_state()["state"] == "stopped"


def test_kill_minus_nine_leaves_a_complete_latest_checkpoint(tmp_path, catalogue):
    manager = JobManager(tmp_path / "runs")
    run = manager.submit(tiny_job(catalogue, output_dir=str(tmp_path / "runs" / "killed"), save_steps=1))
    pid = run.read_state()["pid"]
    # Kill at several moments while checkpoints are being written every step.
    wait_for(lambda: len([e for e in run.events.read_all() if e["kind"] == "checkpoint"]) >= 2,
             what="two checkpoints")
    time.sleep(0.7)  # land somewhere inside the next step or save
    os.killpg(run.read_state()["pgid"], signal.SIGKILL)
    wait_for(lambda: not process_alive(pid), timeout=30, what="the worker to die")

    latest = run.latest_checkpoint()
    assert latest is not None
    for folder in run.checkpoints.glob("checkpoint-*"):
        assert (folder / "trainer_state.json").is_file(), f"half-written {folder.name} is visible"
    state = json.loads((latest / "trainer_state.json").read_text())
    assert state["global_step"] == int(latest.name.split("-")[-1])
    weights = load_file(str(latest / "adapter_model.safetensors"))
    assert weights and all(torch.isfinite(t).all() for t in weights.values())
    torch.load(latest / "optimizer.pt", weights_only=False)

    # The manager notices the worker vanished and marks the run failed, with a reason.
    manager.refresh()
    assert run.read_state()["state"] == "failed"
    assert "ended without reporting" in run.read_state()["error"]
