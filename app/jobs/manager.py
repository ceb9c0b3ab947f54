"""Spawning, stopping, queueing and re-attaching workers (training, evaluation, ...).

Each run is `python -m app.cli <kind> runs/<name>/<config file>` (train + job.yaml, eval + eval.yaml) in
its own session and process group; one runs at a time, the others queue. Its output goes to
`worker.log` (a file, never a pipe, so a worker never blocks on a reader that went away). The manager
keeps no state of its own that a restart would lose: every answer is rebuilt from the run folders
(the summaries cache only remembers how far it has read them).

The queue moves by `refresh()`, called by the scheduler thread (app.jobs.scheduler) every couple of
seconds and at once when a worker we spawned exits: no browser needs to be open.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app.config import Schema
from app.filelock import file_lock
from app.jobs.names import RunNameError, inside_runs
from app.jobs.process import process_alive, stop_process
from app.jobs.scheduler import Scheduler
from app.jobs.summaries import RunSummary, SummaryCache
from app.train.runfolder import RunFolder
from app.train.threads import LoadWindow

__all__ = ["JobManager", "RunNameError", "RunSummary", "process_alive"]


class JobManager:
    def __init__(self, runs_dir: str | Path = "runs", python: str | None = None):
        self.runs_dir = Path(runs_dir).resolve()
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.python = python or sys.executable
        self._children: dict[str, subprocess.Popen] = {}  # reaped on exit; not needed after a restart
        self._lock = threading.RLock()
        self._queue_depth = 0  # how deep the holder of _lock is in _queue_lock
        self._summaries = SummaryCache()
        self._stopping: set[str] = set()  # runs a Stop is settling (their end is written by the stopper)
        self.scheduler: Scheduler | None = None
        self.load = LoadWindow()  # the machine's recent load, for the OpenMP choice of the workers it starts

    # -- the queue ----------------------------------------------------------------------------
    def start_scheduler(self, interval: float | None = None) -> Scheduler:
        """Drive the queue from a thread of this process (idempotent)."""
        with self._lock:
            if self.scheduler is None or not self.scheduler.running:
                self.scheduler = Scheduler(self._scheduled_pass, interval).start()
            return self.scheduler

    def _scheduled_pass(self) -> None:
        self.load.sample()  # every pass, so a worker started by a click learns how busy the machine was before it
        self.refresh()

    def stop_scheduler(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()
            self.scheduler = None

    # -- submitting ---------------------------------------------------------------------------
    def submit(self, job: Schema) -> RunFolder:
        """Create the run folder and start it now, or queue it behind the running one."""
        job = job.with_run_folder(self.runs_dir)
        if not inside_runs(job.output_dir, self.runs_dir):
            raise RunNameError(f"output_dir: {job.output_dir} is not a folder directly inside the runs folder "
                               f"{self.runs_dir}; give a plain run name")
        run = RunFolder(Path(job.output_dir))
        with self._queue_lock():
            if run.exists() and self._is_active(run):
                raise RuntimeError(f"run {run.name} is already {run.read_state()['state']}")
            run.create(job)
            run.write_state(state="queued", queued=round(time.time(), 3), pid=None, pgid=None, error=None,
                            exit_code=None, saving=None)
            self.refresh()
        return run

    def resume(self, name: str) -> RunFolder:
        """Continue a stopped or failed run from its newest complete checkpoint, same folder."""
        run = self.run(name)
        if run.kind != "train":  # evaluations and generations have no checkpoints to continue from
            raise RuntimeError(f"{name} is a '{run.kind}' run: only training runs resume from a checkpoint; "
                               f"start a new one instead")
        job = run.job().replace(resume_from_checkpoint=True)
        return self.submit(job)

    def _spawn(self, run: RunFolder) -> None:
        with open(run.log_file, "ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {run.name}\n".encode())
            log.flush()
            env = os.environ | {"PYTHONUNBUFFERED": "1"} | self.load.env()
            proc = subprocess.Popen(
                [self.python, "-m", "app.cli", *run.kind.split(), str(run.job_file)],  # kind: "data generate"
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # its own session and process group: Stop signals the whole group
                cwd=os.getcwd(), env=env,
            )
        self._children[run.name] = proc
        run.write_state(state="running", pid=proc.pid, pgid=proc.pid, started=round(time.time(), 3))
        threading.Thread(target=self._await_exit, args=(proc,), name=f"wait-{run.name}", daemon=True).start()

    def _await_exit(self, proc: subprocess.Popen) -> None:
        """Reap our child the moment it exits and settle its run (a crash reads `failed` at once)."""
        proc.wait()
        try:
            self.refresh()
        except Exception:  # noqa: BLE001 - the scheduler's next pass tries again
            pass

    # -- watching -----------------------------------------------------------------------------
    def runs(self) -> list[RunFolder]:
        found = []
        for path in self.runs_dir.iterdir():
            run = RunFolder(path)
            if path.is_dir() and run.exists():
                try:
                    found.append((run.job_file.stat().st_mtime, run))
                except OSError:  # removed while we looked
                    continue
        return [run for _, run in sorted(found, key=lambda pair: pair[0], reverse=True)]

    def run(self, name: str) -> RunFolder:
        if not name or "/" in name or name in (".", ".."):
            raise KeyError(f"no run named {name!r} in {self.runs_dir}")
        run = RunFolder(self.runs_dir / name)
        if not run.exists():
            raise KeyError(f"no run named {name!r} in {self.runs_dir}")
        return run

    def _is_active(self, run: RunFolder) -> bool:
        state = run.read_state()
        if state.get("state") == "queued":
            return True
        return process_alive(state.get("pid"), state.get("started"))

    @contextmanager
    def _queue_lock(self) -> Iterator[None]:
        """This process's lock and a lock file in the runs folder: two studios (or a studio and
        `ftstudio runs`) on one runs folder never start the same queued run twice."""
        with self._lock:
            if self._queue_depth:  # re-entered by this thread (submit -> refresh): the file is ours already
                yield
                return
            with file_lock(self.runs_dir / ".queue.lock"):  # a new open file: taken once per holder
                self._queue_depth += 1
                try:
                    yield
                finally:
                    self._queue_depth -= 1

    def refresh(self) -> None:
        """Reap finished children, mark dead workers failed, start the next queued run."""
        with self._queue_lock():
            for name, proc in list(self._children.items()):
                if proc.poll() is not None:
                    del self._children[name]
            queued, running = [], False
            for run in self.runs():
                state = run.read_state()
                if state.get("state") == "running":
                    if process_alive(state.get("pid"), state.get("started")):
                        running = True
                    elif run.name not in self._stopping:
                        self._settle_dead(run)
                elif state.get("state") == "queued":
                    queued.append((state.get("queued", 0), run))
            if not running and queued:
                self._spawn(min(queued, key=lambda pair: pair[0])[1])

    @staticmethod
    def _settle_dead(run: RunFolder) -> None:
        """A `running` run whose worker is gone: take its own last word, or mark it failed."""
        events = run.events.read_all()
        last = events[-1] if events else {}
        if last.get("kind") == "done":  # it reported, then died before updating state.json
            run.write_state(state=last.get("state", "failed"), error=last.get("error"), ended=last["t"],
                            saving=None)
            return
        error = "the worker process ended without reporting (killed or out of memory?)"
        run.events.append("done", state="failed", error=error)
        run.write_state(state="failed", error=error, ended=round(time.time(), 3), saving=None)

    def active(self) -> RunFolder | None:
        for run in self.runs():
            state = run.read_state()
            if state.get("state") == "running" and process_alive(state.get("pid"), state.get("started")):
                return run
        return None

    def summaries(self) -> list[RunSummary]:
        """One line per run; each call reads only what the event logs gained since the previous one."""
        runs = self.runs()
        self._summaries.forget({str(run.path) for run in runs})
        return [self._summaries.summary(run) for run in runs]

    # -- stopping -----------------------------------------------------------------------------
    def stop(self, name: str, grace_s: float | None = None, wait: bool = False,
             ceiling_s: float | None = None) -> None:
        """SIGTERM the worker (it saves and ends `stopped`); SIGKILL only after the grace period, and
        while it reports saving only after the ceiling (app.jobs.process.stop_process)."""
        run = self.run(name)
        state = run.read_state()
        if state.get("state") in ("queued", "new"):
            with self._lock:
                run.events.append("done", state="stopped", error=None)
                run.write_state(state="stopped", ended=round(time.time(), 3))
            return
        pid = state.get("pid")
        if state.get("state") != "running" or not process_alive(pid, state.get("started")):
            self.refresh()
            return
        with self._lock:
            self._stopping.add(run.name)
        waiter = threading.Thread(target=self._stop_and_settle, args=(run, state, grace_s, ceiling_s),
                                  name=f"stop-{run.name}", daemon=True)
        waiter.start()
        if wait:
            waiter.join()

    def _stop_and_settle(self, run: RunFolder, state: dict, grace_s: float | None, ceiling_s: float | None) -> None:
        outcome = stop_process(state.get("pid"), state.get("pgid"), started=state.get("started"),
                               child=self._children.get(run.name), grace_s=grace_s, ceiling_s=ceiling_s,
                               busy=lambda: bool(run.read_state().get("saving")))
        with self._lock:
            self._stopping.discard(run.name)
            if run.read_state().get("state") == "running":  # killed before it could write its end
                why = ("still saving when the stop ceiling ran out" if outcome.was_busy
                       else "it did not end within the grace period")
                error = f"stopped by force ({why}, {outcome.waited_s:.0f} s after the stop request)"
                run.events.append("done", state="stopped", error=error)
                run.write_state(state="stopped", ended=round(time.time(), 3), error=error, saving=None)
        self.refresh()
