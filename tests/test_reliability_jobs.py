"""Process control and the queue, with real processes: a stand-in worker (tests/fixtures/fake_worker.py)
that behaves like `ftstudio train` (state.json, events, signals) without loading a model.

Stop waits while a worker reports it is saving, kills only after the ceiling and only what is alive,
reaps its children; the queue moves with no browser open; a crash reads `failed`; an unreadable or
missing state.json never reads as `queued`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import psutil
import pytest

from app.config import JobConfig
from app.jobs.manager import JobManager
from app.jobs.names import RunNameError, check_run_name
from app.jobs.process import group_alive, process_alive, stop_process
from app.train.runfolder import RunFolder

REPO = Path(__file__).resolve().parent.parent
FAKE = REPO / "tests" / "fixtures" / "fake_worker.py"


def wait_for(predicate, timeout: float = 60, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture()
def studio(tmp_path: Path):
    """A manager whose 'python' runs the stand-in worker; modes.json says how each run behaves."""
    wrapper = tmp_path / "fake-python"
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} {FAKE} \"$@\"\n")
    wrapper.chmod(0o755)
    modes: dict[str, str] = {}
    manager = JobManager(tmp_path / "runs", python=str(wrapper))

    def submit(name: str, mode: str) -> RunFolder:
        modes[name] = mode
        (tmp_path / "modes.json").write_text(json.dumps(modes))
        return manager.submit(JobConfig(output_dir=str(tmp_path / "runs" / name), dataset_dir=str(tmp_path)))

    yield manager, submit
    manager.stop_scheduler()
    for run in manager.runs():
        state = run.read_state()
        if process_alive(state.get("pid")):
            stop_process(state["pid"], state.get("pgid"), grace_s=0.1, ceiling_s=0.1)


def zombies() -> list[int]:
    return [p.pid for p in psutil.Process().children(recursive=True) if p.status() == psutil.STATUS_ZOMBIE]


def test_the_queue_moves_with_no_browser(studio):
    manager, submit = studio
    first = submit("first", "exit")
    second = submit("second", "exit")
    assert first.read_state()["state"] == "running" and second.read_state()["state"] == "queued"
    manager.start_scheduler(interval=0.2)  # what `ftstudio webui` starts; nothing polls from a page
    wait_for(lambda: second.read_state()["state"] == "finished", what="the queued run to run and finish")
    assert first.read_state()["state"] == "finished"
    assert second.read_state()["started"] >= first.read_state()["ended"]  # one at a time
    wait_for(lambda: not zombies(), timeout=10, what="children to be reaped")


def test_a_crash_reads_failed_at_once(studio):
    manager, submit = studio
    run = submit("crashing", "crash")
    wait_for(lambda: run.read_state()["state"] == "failed", timeout=10, what="the crash to be noticed")
    assert "ended without reporting" in run.read_state()["error"]
    assert run.events.read_all()[-1]["kind"] == "done"
    assert not zombies()


def test_stop_waits_while_the_worker_saves(studio):
    manager, submit = studio
    run = submit("saver", "save_on_term")
    wait_for(lambda: run.events.read_all(), what="the worker to start")
    manager.stop("saver", grace_s=1.0, ceiling_s=60, wait=True)  # the save (2 s) outlasts the grace
    state = run.read_state()
    assert state["state"] == "stopped" and not state.get("error"), state
    assert (run.path / "saved").read_text() == "complete"  # never killed mid-save
    assert not zombies()


def test_stop_forces_after_the_ceiling_and_leaves_no_orphan(studio):
    manager, submit = studio
    run = submit("stubborn", "ignore_term")
    helper_file = run.path / "helper.pid"
    wait_for(helper_file.exists, what="the worker and its helper to start")
    pgid, helper = run.read_state()["pgid"], int(helper_file.read_text())
    manager.stop("stubborn", grace_s=0.3, ceiling_s=0.6, wait=True)
    state = run.read_state()
    assert state["state"] == "stopped" and "by force" in state["error"]
    assert group_alive(pgid) == [] and not process_alive(helper)  # the helper in its group too
    assert not zombies()


def test_stop_process_signals_only_what_lives():
    import subprocess

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    outcome = stop_process(child.pid, child.pid, child=child, grace_s=5, ceiling_s=5)
    assert outcome.forced is False and child.returncode is not None  # SIGTERM was enough; reaped
    again = stop_process(child.pid, child.pid, child=child, grace_s=1, ceiling_s=1)  # gone: nothing sent
    assert again.forced is False


def test_missing_or_torn_state_never_reads_as_queued(tmp_path):
    manager = JobManager(tmp_path / "runs", python="/bin/false")
    torn, fresh = RunFolder(tmp_path / "runs" / "torn"), RunFolder(tmp_path / "runs" / "fresh")
    for run in (torn, fresh):
        run.create(JobConfig(output_dir=str(run.path)))
    torn.state_file.write_text('{"state": "runn')  # a torn write
    assert torn.read_state()["state"] == "unreadable" and "state.json" in torn.read_state()["error"]
    assert fresh.read_state()["state"] == "new"
    manager.refresh()  # would spawn /bin/false for a queued run
    assert torn.read_state()["state"] == "unreadable" and fresh.read_state()["state"] == "new"
    assert {s.name: s.state for s in manager.summaries()} == {"torn": "unreadable", "fresh": "new"}
    torn.write_state(state="stopped")  # a writer replaces a torn file with a whole one
    assert torn.read_state()["state"] == "stopped"


@pytest.mark.parametrize("name", ["../escape", "a/b", "/tmp/abs", "..", ".", "x/../../y", "", "a\\b"])
def test_run_names_stay_in_the_runs_folder(tmp_path, name):
    from app.config import ConfigError
    from app.ui.forms import default_controls, form_to_job

    with pytest.raises(RunNameError, match="output_dir"):
        check_run_name(name, tmp_path / "runs")
    if name:
        values = default_controls() | {"output_dir": name}
        with pytest.raises(ConfigError, match=f"output_dir.*{tmp_path / 'runs'}"):
            form_to_job(values, None, tmp_path, tmp_path / "runs")
    manager = JobManager(tmp_path / "runs", python="/bin/false")
    with pytest.raises(RunNameError, match="output_dir"):
        manager.submit(JobConfig(output_dir=str(tmp_path / "elsewhere" / "run")))
    assert not (tmp_path / "elsewhere").exists() and list((tmp_path / "runs").iterdir()) == []


def test_summaries_read_only_what_was_appended(tmp_path):
    manager = JobManager(tmp_path / "runs", python="/bin/false")
    run = RunFolder(tmp_path / "runs" / "long")
    run.create(JobConfig(output_dir=str(run.path)))
    run.write_state(state="stopped")
    for step in range(1, 2001):
        run.events.append("log", step=step, total_steps=5000, loss=1.0 + 1 / step, lr=1e-4)
    first = manager.summaries()[0]
    read = manager._summaries.bytes_read
    assert first.step == 2000 and read == run.events.path.stat().st_size
    size = run.events.path.stat().st_size
    run.events.append("log", step=2001, total_steps=5000, loss=0.5, lr=1e-4)
    for _ in range(5):  # ticks
        latest = manager.summaries()[0]
    assert latest.step == 2001 and latest.loss == 0.5
    assert manager._summaries.bytes_read - read == run.events.path.stat().st_size - size  # only the new line


def test_worker_reports_saving_through_its_stop_flag(tmp_path):
    from app.train.lifecycle import RunContext

    run = RunFolder(tmp_path / "r")
    run.create(JobConfig(output_dir=str(run.path)))
    ctx = RunContext(run)
    ctx.stop.saving("checkpoint-7")
    assert run.read_state()["saving"]["what"] == "checkpoint-7"
    ctx.stop.saving(None)
    assert run.read_state()["saving"] is None
    with ctx.saving("adapter"):
        assert run.read_state()["saving"]["what"] == "adapter"
    assert run.read_state()["saving"] is None
    quiet = RunContext(run, writes_state=False)  # ranks other than 0 never write state.json
    before = run.state_file.read_bytes()
    quiet.stop.saving("checkpoint-8")
    assert run.state_file.read_bytes() == before


def test_atomic_writes_from_many_threads_never_tear(tmp_path):
    import threading

    from app.atomic import write_json_atomic

    path = tmp_path / "state.json"
    errors: list[Exception] = []

    def writer(n: int) -> None:
        for i in range(50):
            try:
                write_json_atomic(path, {"writer": n, "i": i, "pad": "x" * 5000})
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    reads = 0
    while any(t.is_alive() for t in threads):
        if path.exists():
            assert json.loads(path.read_text())["pad"] == "x" * 5000
            reads += 1
    assert not errors and reads > 0
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp file left behind


def test_no_space_is_said_plainly():
    import errno

    from app.train.lifecycle import describe_failure

    full = OSError(errno.ENOSPC, "No space left on device")
    too_large = OSError(errno.EFBIG, "File too large")
    wrapped = RuntimeError("PytorchStreamWriter failed writing file")
    wrapped.__cause__ = too_large
    for exc in (full, too_large, wrapped):
        assert describe_failure(exc).startswith("no space left to write")
    from app.data.errors import DataError, Problem

    mistake = DataError([Problem("data/x.json", 3, "output", "missing value")])
    assert describe_failure(mistake) == "data/x.json, row 3, field 'output': missing value"  # no class name


def test_one_loopback_check_for_every_server():
    from app.net import is_loopback
    from app.serve import main as serve_main
    from app.ui import app as ui_app
    from app.ui import export_server

    assert serve_main.is_loopback is is_loopback and ui_app.is_loopback is is_loopback
    assert export_server.is_loopback is is_loopback
    for host in ("127.0.0.1", "127.8.9.1", "::1", "[::1]", "localhost", " LOCALHOST "):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "", "192.168.1.5", "example.com", "localhost.evil.com", None):
        assert not is_loopback(host), host


def test_preference_votes_are_appended_not_rewritten(tmp_path):
    from app.data.catalogue import load_catalogue
    from app.data.formats import load_examples
    from app.ui.preference import Preference, save_preference

    (tmp_path / "dataset_info.json").write_text("{}")
    first = save_preference(tmp_path, "votes", Preference("Q0", "good 0", "bad 0"))
    inode = os.stat(first.path).st_ino
    for i in range(1, 5):
        saved = save_preference(tmp_path, "votes", Preference(f"Q{i}", f"good {i}", f"bad {i}"))
        assert os.stat(saved.path).st_ino == inode  # the same file grew: nothing was rewritten
    assert saved.rows == 5 and saved.path.suffix == ".jsonl"
    assert len(saved.path.read_text().splitlines()) == 5
    spec = load_catalogue(tmp_path)["votes"]
    assert spec.ranking and len(load_examples(spec, "dpo")) == 5


def test_dataset_cache_is_bounded():
    from app.ui.datasets import BoundedCache

    cache = BoundedCache(max_entries=3, max_cost=100)
    for i in range(10):
        cache.put(("k", i), [i] * 10, 10)
    assert len(cache) == 3 and cache.get(("k", 9))[0] and not cache.get(("k", 0))[0]
    cache.put(("big",), list(range(500)), 500)  # larger than the whole cache: not kept
    assert not cache.get(("big",))[0] and cache.cost <= 100
    for i in range(10, 20):
        cache.put(("k", i), [i] * 40, 40)
    assert cache.cost <= 100 and len(cache) <= 3


def test_a_skipped_fidelity_check_is_not_a_pass():
    from app.ui.export_report import report_markdown

    report = {"name": "lumi", "format": "gguf", "quant": "f16", "output_dir": "/x", "passed": None,
              "fidelity": {"skipped": True, "result": "not checked"}, "files": []}
    text = report_markdown(report)
    assert "✓ Exported" in text and "not checked" in text and "pass" not in text.split("not checked")[0].lower()


def test_two_managers_on_one_runs_folder_start_a_queued_run_once(studio, tmp_path):
    """Two studios (or a studio and `ftstudio runs`) share a runs folder: their passes are serialised by a
    lock file, so a queued run is started once."""
    import threading

    manager, submit = studio
    first = submit("first", "exit")
    second = submit("second", "exit")
    other = JobManager(manager.runs_dir, python=manager.python)
    wait_for(lambda: first.read_state()["state"] == "finished", what="the first run")
    passes = [threading.Thread(target=m.refresh) for m in (manager, other) for _ in range(3)]
    for thread in passes:
        thread.start()
    for thread in passes:
        thread.join()
    wait_for(lambda: second.read_state()["state"] == "finished", what="the second run")
    starts = [e for e in second.events.read_all() if e["kind"] == "stage"]
    assert len(starts) == 1  # one worker ran it
    assert second.log_file.read_text().count("starting second") == 1


def test_the_best_checkpoint_comes_with_the_incremental_summary(tmp_path):
    from app.ui import plots

    manager = JobManager(tmp_path / "runs", python="/bin/false")
    run = RunFolder(tmp_path / "runs" / "evalled")
    run.create(JobConfig(output_dir=str(run.path)))
    run.write_state(state="finished")
    run.events.append("best", step=20, eval_loss=1.25, path="checkpoint-20")
    run.events.append("log", step=21, total_steps=40, loss=1.0, lr=1e-4)
    assert plots.runs_frame(manager.summaries()).iloc[0]["best"] == "★ checkpoint-20 (1.2500)"
    run.events.append("best", step=30, eval_loss=1.0, path="checkpoint-30")
    assert manager.summaries()[0].best["step"] == 30


def test_only_training_runs_resume(tmp_path):
    from app.config import EvalConfig

    manager = JobManager(tmp_path / "runs")
    run = RunFolder(tmp_path / "runs" / "eval-1")
    run.create(EvalConfig(output_dir=str(run.path)))
    run.write_state(state="stopped")
    assert run.kind == "eval"
    with pytest.raises(RuntimeError, match="only training runs resume"):
        manager.resume("eval-1")
    assert run.read_state()["state"] == "stopped"  # nothing was queued


def test_a_worker_starting_its_run_keeps_the_run_list_order(tmp_path):
    """The run list sorts newest job.yaml first; a worker re-creating its folder on start with the same job
    must not move it (an open run picker would re-order under the user's click)."""
    manager = JobManager(tmp_path / "runs")
    first, second = (RunFolder(tmp_path / "runs" / name) for name in ("first", "second"))
    for age, run in ((200, first), (100, second)):
        job = JobConfig(output_dir=str(run.path)).with_run_folder(tmp_path / "runs")
        run.create(job)
        os.utime(run.job_file, (time.time() - age, time.time() - age))
    assert [r.name for r in manager.runs()] == ["second", "first"]
    first.create(first.job().with_run_folder(tmp_path / "runs"))  # what the worker does when it starts
    assert [r.name for r in manager.runs()] == ["second", "first"]
    first.create(first.job().replace(max_steps=7))  # a changed job (resume, a new submit) is written
    assert first.job().max_steps == 7 and [r.name for r in manager.runs()] == ["first", "second"]


def _checkpoint(folder: Path, files: int) -> None:
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text("{}")
    for i in range(files):
        (folder / f"part-{i:04d}.bin").write_bytes(b"x" * 64)


def test_a_kill_while_deleting_a_checkpoint_leaves_it_whole_or_gone(tmp_path):
    """Rotation and re-saving a step delete a checkpoint (app/train/checkpoints.remove_checkpoint); kill -9
    at random moments of that delete: `checkpoint-N` is then either complete or not there at all."""
    import random
    import signal
    import subprocess

    from app.train.checkpoints import TRASH

    rng = random.Random(7)
    code = ("import sys; from pathlib import Path; from app.train.checkpoints import remove_checkpoint; "
            "print('ready', flush=True); sys.stdin.readline(); remove_checkpoint(Path(sys.argv[1]))")
    midway = 0
    for attempt in range(10):
        root = tmp_path / f"attempt-{attempt}"
        folder = root / "checkpoint-9"
        _checkpoint(folder, files=4000)
        child = subprocess.Popen([sys.executable, "-c", code, str(folder)], cwd=REPO, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        child.stdin.write("go\n")
        child.stdin.flush()
        time.sleep(rng.uniform(0.005, 0.04))
        child.send_signal(signal.SIGKILL)
        child.wait()
        if folder.exists():
            assert len(list(folder.iterdir())) == 4001, f"attempt {attempt}: a visible checkpoint lost files"
        midway += (root / (TRASH + folder.name)).exists()  # the kill landed while the files were going
    assert midway >= 1  # the kills did land in the middle of deletes


def test_rotation_keeps_the_newest_and_the_best_and_clears_what_a_kill_left(tmp_path):
    from app.train.checkpoints import TRASH, rotate
    from app.train.runfolder import RunFolder

    run = RunFolder(tmp_path / "run")
    for step in (2, 4, 6, 8, 10):
        _checkpoint(run.checkpoints / f"checkpoint-{step}", files=2)
    (run.checkpoints / f"{TRASH}checkpoint-1").mkdir()  # a delete a kill interrupted
    rotate(run.checkpoints, 2, best_model_checkpoint=str(run.checkpoints / "checkpoint-4"))
    assert [p.name for p in run.complete_checkpoints()] == ["checkpoint-4", "checkpoint-10"]
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["checkpoint-10", "checkpoint-4"]
    rotate(run.checkpoints, None)  # no limit: nothing is deleted
    assert len(run.complete_checkpoints()) == 2
