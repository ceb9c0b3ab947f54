"""The loop controller: check the policy, train a candidate, evaluate it against the served version, decide.

    controller = LoopController("runs")
    controller.status()          # served version, feedback counts, new rows, whether a cycle is due
    controller.run_once()        # one cycle if due (force=True: regardless); None when not due
    controller.rollback(2)       # serve version 2 again

One cycle:
  1. build the mix: every row of the feedback set (feedback_sft for sft, feedback_pref for dpo) plus a
     replayed sample of the original data, registered as `loop-<model>-v<N>` (app.loop.replay)
  2. submit the training job through the job manager (it queues behind a running job) and wait for it
  3. submit two evaluations on the held-out set: the candidate and the served version (reused when the
     history holds one with the same settings); wait for both
  4. decide on the policy's metric and tolerance; append the candidate to the history, promoted or not
Promotion is only that history line: an API server that follows the loop swaps its adapter when it sees it
(app.serve.loop_follow). One cycle runs at a time per runs folder (a lock file); progress goes to
runs/loop/status.json, which the UI and `ftstudio loop status` show.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.atomic import write_json_atomic
from app.config.loop import POLICY_FILE, LoopPolicy
from app.eval.results import read_results
from app.filelock import file_lock
from app.jobs.manager import JobManager, process_alive
from app.loop.feedback import SET_OF_METHOD, FeedbackCounts, FeedbackStore
from app.loop.history import History, LoopError, Version
from app.loop.plans import base_model, decide, eval_config, eval_key, scores_of, training_job
from app.loop.replay import build_mix
from app.loop.rows import count_rows
from app.train.runfolder import RunFolder

LOOP_DIR = "loop"
FEEDBACK_DIR = "feedback"
STATUS_FILE = "status.json"
POLL_S = 1.0
ENDED = ("finished", "failed", "stopped")


class LoopBusy(LoopError):
    """Another cycle is running on this runs folder."""


@dataclass
class LoopStatus:
    policy: LoopPolicy | None
    served: Version | None
    counts: FeedbackCounts
    feedback_set: str
    new_rows: int
    due: bool
    activity: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Cycle:
    version: int
    promoted: bool
    reason: str
    entry: dict[str, Any]


def policy_file(runs_dir: str | Path) -> Path:
    return Path(runs_dir) / LOOP_DIR / POLICY_FILE


def load_policy(path: str | Path) -> LoopPolicy:
    path = Path(path)
    if not path.is_file():
        raise LoopError(f"There is no loop policy at {path}: save one in the Continuous fine-tuning panel (Export "
                        "tab) or with `ftstudio loop policy --model_name NAME --eval_dataset SET ...`.")
    return LoopPolicy.load(path).resolved(Path.cwd())


def feedback_store(runs_dir: str | Path, dataset_dir: str | Path) -> FeedbackStore:
    return FeedbackStore(Path(runs_dir) / FEEDBACK_DIR, dataset_dir)


def studio_store(runs_dir: str | Path, dataset_dir: str | Path) -> FeedbackStore:
    """Where the studio's feedback goes: the loop policy's catalogue when one is saved, else `dataset_dir`."""
    path = policy_file(runs_dir)
    if path.is_file():
        try:
            dataset_dir = load_policy(path).dataset_dir
        except (LoopError, ValueError):
            pass  # a broken policy file is reported by the panel; feedback still lands in the studio's catalogue
    return feedback_store(runs_dir, dataset_dir)


def _check_sets(policy: LoopPolicy) -> None:
    """The held-out sets must exist before minutes go into training a candidate that cannot be scored."""
    from app.data.catalogue import load_catalogue
    from app.data.errors import DataError

    try:
        known = load_catalogue(policy.dataset_dir)
    except DataError as exc:
        raise LoopError(f"Cannot read the catalogue in {policy.dataset_dir}: {exc}") from None
    missing = [name for name in policy.eval_datasets if name not in known]
    if missing:
        raise LoopError(f"eval_dataset: no dataset {', '.join(map(repr, missing))} in {policy.dataset_dir}/"
                        "dataset_info.json: choose the held-out set(s) the candidates are scored on.")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "model"


class LoopController:
    def __init__(self, runs_dir: str | Path = "runs", policy_path: str | Path | None = None,
                 manager: JobManager | None = None, should_stop: Callable[[], bool] = lambda: False):
        self.runs_dir = Path(runs_dir).resolve()
        self.folder = self.runs_dir / LOOP_DIR
        self.policy_path = Path(policy_path) if policy_path else self.folder / POLICY_FILE
        self.history = History(self.folder)
        self.status_file = self.folder / STATUS_FILE
        self._manager = manager
        self.should_stop = should_stop

    @property
    def manager(self) -> JobManager:
        if self._manager is None:
            self._manager = JobManager(self.runs_dir)
        return self._manager

    def policy(self) -> LoopPolicy:
        return load_policy(self.policy_path)

    def save_policy(self, policy: LoopPolicy) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        policy.save(self.policy_path)
        return self.policy_path

    def store(self, policy: LoopPolicy | None = None) -> FeedbackStore:
        return feedback_store(self.runs_dir, (policy or self.policy()).dataset_dir)

    # -- reading -----------------------------------------------------------------------------------
    def activity(self) -> dict[str, Any]:
        try:
            state = json.loads(self.status_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {"state": "idle", "message": "no check has run yet"}
        if state.get("state") != "idle" and not process_alive(state.get("pid")):
            state = state | {"state": "interrupted", "message": f"interrupted: {state.get('message', '')}"}
        return state

    def status(self, dataset_dir: str | Path | None = None) -> LoopStatus:
        policy = self.policy() if self.policy_path.is_file() else None
        folder = policy.dataset_dir if policy else (dataset_dir or ".")
        store = feedback_store(self.runs_dir, folder)
        feedback_set = SET_OF_METHOD[policy.method if policy else "sft"]
        new = max(0, count_rows(folder, feedback_set) - self.history.consumed_rows(feedback_set))
        return LoopStatus(policy, self.history.served(), store.counts(), feedback_set, new,
                          bool(policy and new >= policy.min_new_rows), self.activity(), self.history.entries())

    # -- acting ------------------------------------------------------------------------------------
    def rollback(self, number: int) -> Version:
        """Serve version `number` again (a history line; a following API server swaps to it)."""
        served = self.history.served()
        version = self.history.servable(int(number))
        if served is not None and served.number == version.number:
            raise LoopError(f"Version {version.number} is already served.")
        self.history.append("rollback", version=version.number, adapter=version.adapter,
                            from_version=served.number if served else None)
        return version

    def run_once(self, force: bool = False, progress: Callable[[str], None] | None = None) -> Cycle | None:
        """One cycle when at least min_new_rows new feedback rows arrived (or `force`); None when not due."""
        with self._cycle_lock():
            policy = self.policy()
            self.history.ensure_start(policy.adapter)
            status = self.status()
            if status.new_rows <= 0 and force:
                if count_rows(policy.dataset_dir, status.feedback_set) == 0:
                    raise LoopError(f"There is no feedback in {status.feedback_set} yet: rate or correct some answers "
                                    "first (Chat tab, or POST /v1/feedback).")
            elif not status.due and not force:
                return None
            _check_sets(policy)
            try:
                return self._cycle(policy, status, progress or (lambda message: None))
            finally:
                self._report("idle", "waiting for feedback")

    @contextmanager
    def _cycle_lock(self) -> Iterator[None]:
        with ExitStack() as held:
            try:
                held.enter_context(file_lock(self.folder / ".cycle.lock", blocking=False))
            except BlockingIOError:
                raise LoopBusy(f"A check is already running: {self.activity().get('message', '')}") from None
            yield

    def _report(self, state: str, message: str, version: int | None = None, say: Callable[[str], None] | None = None
                ) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.status_file, {"state": state, "message": message, "version": version,
                                             "pid": os.getpid(), "t": round(time.time(), 3)})
        if say is not None:
            say(message)

    def _cycle(self, policy: LoopPolicy, status: LoopStatus, say: Callable[[str], None]) -> Cycle:
        served, start = status.served, self.history.versions()[0]
        assert served is not None
        number = self.history.next_version()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = base_model(policy, start)
        feedback_total = count_rows(policy.dataset_dir, status.feedback_set)
        data: dict[str, Any] = {"feedback_set": status.feedback_set, "feedback_total": feedback_total,
                                "new_rows": status.new_rows}
        self._report("mixing", f"v{number}: mixing {feedback_total} feedback rows with replayed data", number, say)
        try:
            mix = build_mix(Path(policy.dataset_dir), f"loop-{_slug(policy.model_name)}-v{number}", policy.method,
                            status.feedback_set, self._replay_sets(policy, start), policy.replay_share, seed=number)
        except LoopError as exc:
            return self._failed(number, "data", str(exc), data, served)
        data |= mix.summary()
        run_dir = self.runs_dir / f"loop-{_slug(policy.model_name)}-v{number}-{stamp}"
        job = training_job(policy, served, base, mix.name, run_dir)
        run = self.manager.submit(job)
        self._report("training", f"v{number}: training {policy.method} on {mix.feedback_rows} feedback + "
                                 f"{mix.replay_rows} replayed rows ({run.name})", number, say)
        if self._wait([run])[run.name] != "finished":
            return self._failed(number, "train", run.read_state().get("error") or "training did not finish", data,
                                served, run)
        return self._evaluate(policy, served, base, number, run, data, stamp, say)

    def _evaluate(self, policy: LoopPolicy, served: Version, base: str | None, number: int, run: RunFolder,
                  data: dict[str, Any], stamp: str, say: Callable[[str], None]) -> Cycle:
        slug = _slug(policy.model_name)
        mine = eval_config(policy, base, str(run.path), self.runs_dir / f"loop-{slug}-v{number}-eval-{stamp}")
        theirs = eval_config(policy, base, served.adapter,
                             self.runs_dir / f"loop-{slug}-v{served.number}-eval-{stamp}")
        reused = self._earlier_eval(served.number, eval_key(theirs))
        runs = [self.manager.submit(mine)] + ([] if reused else [self.manager.submit(theirs)])
        self._report("evaluating", f"v{number}: scoring the candidate{'' if reused else ' and the served version'} "
                                   f"v{served.number} on {policy.eval_dataset}", number, say)
        states = self._wait(runs)
        broken = [name for name, state in states.items() if state != "finished"]
        if broken:
            failed = RunFolder(self.runs_dir / broken[0])
            return self._failed(number, "eval", failed.read_state().get("error") or "evaluation did not finish",
                                data, served, run)
        served_run = reused or runs[1].path
        candidate, current = scores_of(read_results(runs[0].path)), scores_of(read_results(served_run))
        promoted, reason = decide(policy, candidate, current)
        entry = self.history.append(
            "candidate", version=number, adapter=str(run.path), run=run.name, from_version=served.number,
            method=policy.method, data=data, metric=policy.metric, tolerance=policy.tolerance,
            scores={"candidate": candidate, "served": current}, promoted=promoted, reason=reason,
            evals={"candidate": {"version": number, "run": str(runs[0].path), "key": eval_key(mine)},
                   "served": {"version": served.number, "run": str(served_run), "key": eval_key(theirs)}})
        say(f"v{number}: {reason}")
        return Cycle(number, promoted, reason, entry)

    def _earlier_eval(self, version: int, key: str) -> Path | None:
        """A finished evaluation of `version` with these settings, from an earlier cycle."""
        for entry in reversed(self.history.entries()):
            for record in (entry.get("evals") or {}).values():
                path = Path(record.get("run", ""))
                if record.get("version") == version and record.get("key") == key and read_results(path):
                    return path
        return None

    def _replay_sets(self, policy: LoopPolicy, start: Version) -> list[tuple[Path, str]]:
        if policy.replay_share <= 0:
            return []
        if policy.replay_datasets:
            return [(Path(policy.dataset_dir), name) for name in policy.replay_datasets]
        from app.loop.plans import served_job

        job, _ = served_job(start)
        return [(Path(job.dataset_dir), name) for name in job.datasets] if job else []

    def _wait(self, runs: list[RunFolder]) -> dict[str, str]:
        while True:
            self.manager.refresh()  # starts a queued run when nothing else runs
            states = {run.name: run.read_state().get("state", "?") for run in runs}
            if all(state in ENDED for state in states.values()):
                return states
            if self.should_stop():
                for run in runs:
                    if states[run.name] not in ENDED:
                        self.manager.stop(run.name)
                raise LoopError("stopped while waiting for " + ", ".join(run.name for run in runs))
            time.sleep(POLL_S)

    def _failed(self, number: int, stage: str, error: str, data: dict[str, Any], served: Version,
                run: RunFolder | None = None) -> Cycle:
        reason = f"{stage} failed: {error}"
        entry = self.history.append("failed", version=number, stage=stage, error=error, data=data,
                                    run=run.name if run else None, from_version=served.number, promoted=False,
                                    reason=reason)
        return Cycle(number, False, reason, entry)
