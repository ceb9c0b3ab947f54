"""Crashes, with the real worker on a 2-layer llama built from a config (tests/conftest.py `tiny_model_dir`):

- kill -9 of the worker's process group at 20 random moments (loading, stepping, writing a checkpoint,
  the final save): each time the manager shows `failed` within 5 s, every checkpoint on disk is
  complete and loads, and a resume continues the step count from the newest one;
- a full disk (the worker's file size limit lowered under it, RLIMIT_FSIZE) ends the run `failed` with
  a "no space" message, and the checkpoint before stays intact and loadable.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from app.config import JobConfig
from app.jobs.manager import JobManager
from app.jobs.process import process_alive
from app.train.runfolder import RunFolder

pytestmark = pytest.mark.slow

KILLS = 20
MOMENTS = ("loading", "stepping", "checkpoint", "final_save")
ROWS = [{"instruction": f"Question number {i}: who are you?", "input": "",
         "output": f"I am Lumi, made by Polaris Lab. ({i})"} for i in range(40)]


def wait_for(predicate, timeout: float = 180, poll: float = 0.02, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture()
def setup(tmp_path: Path, tiny_model_dir: Path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "lumi.json").write_text(json.dumps(ROWS), encoding="utf-8")
    (tmp_path / "dataset_info.json").write_text(json.dumps({"lumi": {"file_name": "data/lumi.json"}}))
    manager = JobManager(tmp_path / "runs")
    manager.start_scheduler(interval=0.5)

    def job(name: str, **changes) -> JobConfig:
        base = dict(model_name_or_path=str(tiny_model_dir), dataset="lumi", dataset_dir=str(tmp_path), cutoff_len=48,
                    per_device_train_batch_size=2, gradient_accumulation_steps=1, logging_steps=1, save_steps=3,
                    max_steps=100_000, learning_rate=1e-3, lora_rank=4, save_total_limit=4,
                    output_dir=str(tmp_path / "runs" / name))
        return JobConfig(**(base | changes))

    yield manager, job
    manager.stop_scheduler()
    for run in manager.runs():
        state = run.read_state()
        if state.get("pgid") and process_alive(state.get("pid")):
            os.killpg(state["pgid"], signal.SIGKILL)


def steps(run: RunFolder, since: float = 0.0) -> list[int]:
    return [e["step"] for e in run.events.read_all()
            if e["kind"] == "log" and not e.get("final") and e.get("loss") is not None and e["t"] >= since]


def stage_seen(run: RunFolder, name: str, since: float) -> bool:
    return any(e["kind"] == "stage" and e["name"] == name and e["t"] >= since for e in run.events.read_all())


def check_checkpoints(run: RunFolder) -> int | None:
    """Every visible checkpoint is complete and loads; returns the newest step (None when there is none)."""
    latest = None
    for folder in run.complete_checkpoints():
        step = int(folder.name.split("-")[-1])
        state = json.loads((folder / "trainer_state.json").read_text())
        assert state["global_step"] == step, folder
        weights = load_file(str(folder / "adapter_model.safetensors"))
        assert weights and all(torch.isfinite(t).all() for t in weights.values()), folder
        torch.load(folder / "optimizer.pt", weights_only=False)
        torch.load(folder / "scheduler.pt", weights_only=False)
        latest = step
    for folder in run.checkpoints.glob("checkpoint-*"):  # nothing half-written is visible as a checkpoint
        assert (folder / "trainer_state.json").is_file(), f"half-written {folder.name} is visible"
    return latest


def kill_at(run: RunFolder, moment: str, since: float, rng: random.Random) -> str | None:
    """Wait for `moment` of the attempt that started at `since`, then kill -9 the worker's group.
    Returns whether it landed while the worker reported saving ("saving" / "other"), or None when the
    attempt ended on its own first (a save that was quicker than the kill)."""
    if moment == "loading":  # anywhere from the imports to the model load (before any training step)
        deadline = time.time() + rng.uniform(0.5, 6.0)
        wait_for(lambda: stage_seen(run, "model_ready", since) or time.time() > deadline, what="loading")
    elif moment == "stepping":
        seen = len(steps(run, since))
        wait_for(lambda: len(steps(run, since)) >= seen + rng.randint(1, 3), what="training steps")
        time.sleep(rng.uniform(0, 0.2))
    elif moment == "checkpoint":
        wait_for(lambda: (run.read_state().get("saving") or {}).get("what", "").startswith("checkpoint"),
                 poll=0.003, what="a checkpoint save")
        time.sleep(rng.uniform(0, 0.01))
    else:
        wait_for(lambda: stage_seen(run, "saving", since) or run.read_state()["state"] != "running",
                 poll=0.003, what="the final save")
        time.sleep(rng.uniform(0, 0.005))
    state = run.read_state()
    try:
        os.killpg(state["pgid"], signal.SIGKILL)
    except ProcessLookupError:
        return None
    return "saving" if state.get("saving") or moment == "final_save" else "other"


def test_twenty_kills_never_corrupt_a_checkpoint(setup):
    manager, job = setup
    rng = random.Random(20)
    moments = [MOMENTS[i % len(MOMENTS)] for i in range(KILLS)]
    rng.shuffle(moments)
    name = "crashy"
    run, latest, kills, in_saves, log = None, None, 0, 0, []
    while kills < KILLS:
        moment = moments[kills]
        # Each attempt: a new run, then resumes of it; a final-save attempt gets an end two steps away.
        end = (latest or 0) + 2 if moment == "final_save" else 100_000
        since = time.time()
        run = manager.submit(job(name, max_steps=end, resume_from_checkpoint=True if run else None))
        landed = kill_at(run, moment, since, rng)
        if landed is None:  # it finished (or failed) before the kill landed: try this moment again
            wait_for(lambda r=run: r.read_state()["state"] not in ("queued", "running"), what="the attempt to end")
            latest = check_checkpoints(run)
            log.append(f"{moment}: ended before the kill")
            continue
        killed_at = time.time()
        wait_for(lambda r=run: r.read_state()["state"] == "failed", timeout=5, poll=0.05,
                 what=f"`failed` within 5 s of kill {kills + 1} ({moment})")
        assert time.time() - killed_at <= 5
        assert "ended without reporting" in run.read_state()["error"]
        kills += 1
        in_saves += landed == "saving"
        resumed = steps(run, since)
        if latest is not None and resumed:  # the attempt continued from the newest checkpoint
            assert resumed[0] == latest + 1, (resumed[0], latest, moment)
            training = [e for e in run.events.read_all() if e["kind"] == "stage" and e["name"] == "training"]
            assert training[-1]["resumed_from"].endswith(f"checkpoint-{latest}")
        new_latest = check_checkpoints(run)  # every checkpoint complete and loadable: 0 corrupt
        assert new_latest is None or latest is None or new_latest >= latest
        latest = new_latest if new_latest is not None else latest
        log.append(f"{moment}: killed {landed}, newest checkpoint {latest}")
    assert kills == KILLS and in_saves >= 1, log  # some kills landed in the middle of a save


def test_a_full_disk_fails_the_run_and_keeps_the_last_checkpoint(setup):
    manager, job = setup
    run = manager.submit(job("full-disk", save_steps=2))
    wait_for(lambda: run.latest_checkpoint() is not None, what="a first checkpoint")
    state = run.read_state()
    before = check_checkpoints(run)
    # The disk "fills up": from now on the worker cannot grow a file past 1 MiB (a checkpoint's tokenizer
    # alone is 3.5 MB; the event log and state files stay far below), as a full disk would refuse it.
    limit = 1 << 20
    assert run.events.path.stat().st_size < limit // 4 and run.log_file.stat().st_size < limit // 2
    psutil.Process(state["pid"]).rlimit(psutil.RLIMIT_FSIZE, (limit, limit))
    wait_for(lambda: run.read_state()["state"] in ("failed", "finished", "stopped"), what="the run to end")
    state = run.read_state()
    assert state["state"] == "failed", state
    assert "no space" in state["error"] and "file too large" in state["error"].lower(), state["error"]
    done = run.events.read_all()[-1]
    assert done["kind"] == "done" and "no space" in done["error"]
    after = check_checkpoints(run)  # the checkpoint before is intact; the failed one is not visible
    assert after is not None and before is not None and after >= before
    assert "no space" in manager.summaries()[0].error


def test_a_failure_after_the_checks_shows_one_line_and_logs_the_traceback(tmp_path):
    """A model folder that passes the checks (it has a config.json) but cannot load: the terminal gets
    one line naming the problem, worker.log the full traceback, the run folder `failed`."""
    import subprocess
    import sys

    model = tmp_path / "broken-model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama", "hidden_size": "not a number"}')
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "lumi.json").write_text(json.dumps(ROWS[:4]), encoding="utf-8")
    (tmp_path / "dataset_info.json").write_text(json.dumps({"lumi": {"file_name": "data/lumi.json"}}))
    out = tmp_path / "runs" / "broken"
    result = subprocess.run([sys.executable, "-m", "app.cli", "train", "--dataset", "lumi", "--dataset_dir",
                             str(tmp_path), "--model_name_or_path", str(model), "--output_dir", str(out)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=600,
                            env=os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    terminal = result.stdout + result.stderr
    assert result.returncode == 1, terminal
    assert "Traceback" not in terminal and "run failed:" in terminal, terminal
    run = RunFolder(out)
    assert run.read_state()["state"] == "failed" and run.read_state()["error"]
    assert "Traceback" in run.log_file.read_text()
