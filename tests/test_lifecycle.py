"""The worker lifecycle shared by every kind of job: the done event, state.json and worker.log per run."""

from __future__ import annotations

import logging

from app.config import EvalConfig
from app.train.lifecycle import setup_logging, supervise
from app.train.runfolder import RunFolder


def _run(tmp_path, name: str) -> RunFolder:
    run = RunFolder(tmp_path / name)
    run.create(EvalConfig(output_dir=str(run.path)))
    return run


def test_two_jobs_in_one_process_log_into_their_own_folders(tmp_path):
    first, second = _run(tmp_path, "first"), _run(tmp_path, "second")
    for run, word in ((first, "alpha"), (second, "beta")):
        setup_logging(run)
        assert supervise(run, lambda ctx, w=word: (logging.getLogger("t").info(w), ("finished", None))[1]) == 0
    assert "alpha" in first.log_file.read_text() and "beta" not in first.log_file.read_text()
    assert "beta" in second.log_file.read_text()
    assert [e["state"] for e in first.events.read_all() if e["kind"] == "done"] == ["finished"]


def test_a_failing_body_ends_failed_with_its_error(tmp_path):
    run = _run(tmp_path, "bad")
    setup_logging(run)

    def body(ctx):
        raise ValueError("val_size: 5 leaves no training rows")

    assert supervise(run, body) == 1
    state = run.read_state()
    assert state["state"] == "failed" and "val_size" in state["error"]
    assert "Traceback" in run.log_file.read_text()  # the traceback stays in the run's own log


def test_a_stop_inside_a_library_import_ends_stopped_not_failed(tmp_path):
    """Seen in CI: Stop reached a worker while transformers imported TRL lazily; transformers re-raises
    anything from an import as RuntimeError("Failed to import ...") from the original. A real SIGTERM
    through the worker's own handler, wrapped the same way, must still end the run `stopped`."""
    import os
    import signal

    run = _run(tmp_path, "early")
    setup_logging(run)

    def body(ctx):
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler raises StopRequested here
        except Exception as exc:
            raise RuntimeError("Failed to import trl.trainer.sft_trainer because of the following error") from exc
        return "finished", None

    assert supervise(run, body) == 0
    state = run.read_state()
    assert state["state"] == "stopped" and state["error"] is None
    assert [e["state"] for e in run.events.read_all() if e["kind"] == "done"] == ["stopped"]
    assert signal.getsignal(signal.SIGTERM) is not None  # the old handler is back


def test_the_one_file_lock_excludes_a_second_holder_and_frees_on_exit(tmp_path):
    """flock belongs to the open file: a second holder, even in this process, waits (or is refused)."""
    import pytest as _pytest

    from app.filelock import file_lock

    lock = tmp_path / "sub" / ".x.lock"
    with file_lock(lock):
        assert lock.is_file()  # made with its folder
        with _pytest.raises(BlockingIOError), file_lock(lock, blocking=False):
            pass
    with file_lock(lock, blocking=False):  # released on exit
        pass
