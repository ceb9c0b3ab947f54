"""Spawning, stopping, queueing and re-attaching workers (training, evaluation, ...).

Each run is `ftstudio <kind> runs/<name>/<config file>` (train + job.yaml, eval + eval.yaml) in its own
process group; one runs at a time, the others queue. Its its output going to
`worker.log` (a file, never a pipe, so a worker never blocks on a reader that went away). The
manager keeps no state of its own: every answer is rebuilt from the run folders, so a browser
refresh or a UI restart finds every run as it is.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from app.config import Schema
from app.train.runfolder import ACTIVE_STATES, RunFolder

STOP_GRACE_S = 30.0


@dataclass
class RunSummary:
    name: str
    path: str
    state: str
    stage: str
    method: str
    dataset: str
    started: float | None
    step: int | None
    total_steps: int | None
    loss: float | None
    error: str | None
    kind: str = "train"  # the ftstudio command that runs it: train | eval | ...


def process_alive(pid: int | None, started: float | None = None) -> bool:
    """True if pid runs and is not a zombie; with `started`, also not a recycled pid."""
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or proc.create_time() <= started + 5
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


class JobManager:
    def __init__(self, runs_dir: str | Path = "runs", python: str | None = None):
        self.runs_dir = Path(runs_dir).resolve()
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.python = python or sys.executable
        self._children: dict[str, subprocess.Popen] = {}  # reaped in refresh(); not needed after restart
        self._lock = threading.RLock()

    # -- submitting ---------------------------------------------------------------------------
    def submit(self, job: Schema) -> RunFolder:
        """Create the run folder and start it now, or queue it behind the running one."""
        job = job.with_run_folder(self.runs_dir)
        run = RunFolder(Path(job.output_dir))
        with self._lock:
            if run.exists() and run.read_state().get("state") in ACTIVE_STATES and self._is_active(run):
                raise RuntimeError(f"run {run.name} is already {run.read_state()['state']}")
            run.create(job)
            run.write_state(state="queued", queued=round(time.time(), 3), pid=None, error=None, exit_code=None)
            self.refresh()
        return run

    def resume(self, name: str) -> RunFolder:
        """Continue a stopped or failed run from its newest complete checkpoint, same folder."""
        run = self.run(name)
        job = run.job().replace(resume_from_checkpoint=True)
        return self.submit(job)

    def _spawn(self, run: RunFolder) -> None:
        with open(run.log_file, "ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {run.name}\n".encode())
            log.flush()
            env = os.environ | {"PYTHONUNBUFFERED": "1"}
            proc = subprocess.Popen(
                [self.python, "-m", "app.cli", *run.kind.split(), str(run.job_file)],  # kind: "data generate"
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: Stop signals the whole group
                cwd=os.getcwd(), env=env,
            )
        self._children[run.name] = proc
        run.write_state(state="running", pid=proc.pid, pgid=proc.pid, started=round(time.time(), 3))

    # -- watching -----------------------------------------------------------------------------
    def runs(self) -> list[RunFolder]:
        found = [run for run in map(RunFolder, self.runs_dir.iterdir()) if run.exists()]
        return sorted(found, key=lambda r: r.job_file.stat().st_mtime, reverse=True)

    def run(self, name: str) -> RunFolder:
        run = RunFolder(self.runs_dir / name)
        if not run.exists():
            raise KeyError(f"no run named {name!r} in {self.runs_dir}")
        return run

    def _is_active(self, run: RunFolder) -> bool:
        state = run.read_state()
        if state.get("state") == "queued":
            return True
        return process_alive(state.get("pid"), state.get("started"))

    def refresh(self) -> None:
        """Reap finished children, mark dead workers failed, start the next queued run."""
        with self._lock:
            for name, proc in list(self._children.items()):
                if proc.poll() is not None:
                    del self._children[name]
            queued, running = [], False
            for run in self.runs():
                state = run.read_state()
                if state.get("state") == "running":
                    if process_alive(state.get("pid"), state.get("started")):
                        running = True
                    else:
                        self._settle_dead(run)
                elif state.get("state") == "queued":
                    queued.append(run)
            if not running and queued:
                self._spawn(min(queued, key=lambda r: r.read_state().get("queued", 0)))

    @staticmethod
    def _settle_dead(run: RunFolder) -> None:
        """A `running` run whose worker is gone: take its own last word, or mark it failed."""
        events = run.events.read_all()
        last = events[-1] if events else {}
        if last.get("kind") == "done":  # it reported, then died before updating state.json
            run.write_state(state=last.get("state", "failed"), error=last.get("error"), ended=last["t"])
            return
        error = "the worker process ended without reporting (killed or out of memory?)"
        run.events.append("done", state="failed", error=error)
        run.write_state(state="failed", error=error, ended=round(time.time(), 3))

    def active(self) -> RunFolder | None:
        for run in self.runs():
            state = run.read_state()
            if state.get("state") == "running" and process_alive(state.get("pid"), state.get("started")):
                return run
        return None

    def summaries(self) -> list[RunSummary]:
        out = []
        for run in self.runs():
            state = run.read_state()
            try:
                job = run.job()
            except Exception:  # noqa: BLE001 - a broken job.yaml still shows up in the list
                job = None
            last = next((e for e in reversed(run.events.read_all())
                         if e["kind"] == "log" and not e.get("final")), {})
            out.append(RunSummary(
                name=run.name, path=str(run.path), kind=run.kind, state=state.get("state", "?"),
                stage=getattr(job, "stage", run.kind), method=getattr(job, "finetuning_type", "-"),
                dataset=",".join(job.datasets) if job else "?", started=state.get("started"),
                step=last.get("step"), total_steps=last.get("total_steps"), loss=last.get("loss"),
                error=state.get("error"),
            ))
        return out

    # -- stopping -----------------------------------------------------------------------------
    def stop(self, name: str, grace_s: float = STOP_GRACE_S, wait: bool = False) -> None:
        """SIGTERM the worker's group (it saves and ends `stopped`); SIGKILL after the grace period."""
        run = self.run(name)
        state = run.read_state()
        if state.get("state") == "queued":
            run.events.append("done", state="stopped", error=None)
            run.write_state(state="stopped", ended=round(time.time(), 3))
            return
        pid = state.get("pid")
        if state.get("state") != "running" or not process_alive(pid, state.get("started")):
            self.refresh()
            return
        pgid = state.get("pgid")  # None: the worker does not lead its own group; signal it alone
        try:
            if pgid:
                os.killpg(pgid, signal.SIGTERM)
            else:
                os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        waiter = threading.Thread(target=self._reap_after, args=(run, pgid, pid, grace_s), daemon=True)
        waiter.start()
        if wait:
            waiter.join()

    def _reap_after(self, run: RunFolder, pgid: int | None, pid: int, grace_s: float) -> None:
        deadline = time.time() + grace_s
        while time.time() < deadline:
            child = self._children.get(run.name)
            if child is not None and child.poll() is not None:
                break
            if child is None and not process_alive(pid):
                break
            time.sleep(0.2)
        try:
            if pgid:
                os.killpg(pgid, signal.SIGKILL)  # anything left in the group: no orphans
            elif process_alive(pid):
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        child = self._children.get(run.name)
        if child is not None:
            child.wait(timeout=10)
        if run.read_state().get("state") == "running":  # killed before it could write its end
            run.events.append("done", state="stopped", error="stopped by force after the grace period")
            run.write_state(state="stopped", ended=round(time.time(), 3))
        self.refresh()
