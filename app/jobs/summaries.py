"""One line per run for the run table, kept up to date incrementally.

The table is asked for every few seconds by every open page; a run's events.jsonl grows by a line per
logged step and can reach megabytes. So each run keeps the byte offset read so far and the newest
step it saw, and each call reads only what was appended since; job.yaml is parsed again only when it
changes. A file that shrank (replaced) is read again from the start.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.train.runfolder import RunFolder


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
    best: dict[str, Any] | None = None  # the newest `best` event: step, eval_loss, path of the best checkpoint


@dataclass
class _Tail:
    """What has been read of one run's files."""

    offset: int = 0
    size: int = 0
    last_log: dict[str, Any] | None = None
    best: dict[str, Any] | None = None
    job_stamp: tuple[int, int] | None = None
    job: dict[str, str] | None = None


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


class SummaryCache:
    """Summaries of run folders, each refreshed from where the previous call stopped reading."""

    def __init__(self) -> None:
        self._tails: dict[str, _Tail] = {}
        self._lock = threading.Lock()
        self.bytes_read = 0  # for tests: how much of the event logs the summaries have read in total

    def summary(self, run: RunFolder) -> RunSummary:
        with self._lock:
            tail = self._tails.setdefault(str(run.path), _Tail())
            self._read_events(run, tail)
            job = self._job(run, tail)
        state = run.read_state()
        last = tail.last_log or {}
        return RunSummary(
            name=run.name, path=str(run.path), kind=run.kind, state=state.get("state", "?"),
            stage=job["stage"], method=job["method"], dataset=job["dataset"], started=state.get("started"),
            step=last.get("step"), total_steps=last.get("total_steps"), loss=last.get("loss"),
            error=state.get("error"), best=tail.best,
        )

    def forget(self, keep: set[str]) -> None:
        """Drop what is known of run folders that are gone."""
        with self._lock:
            for path in set(self._tails) - keep:
                del self._tails[path]

    def _read_events(self, run: RunFolder, tail: _Tail) -> None:
        stamp = _stamp(run.events.path)
        size = stamp[0] if stamp else 0
        if size < tail.offset:  # replaced or truncated: start over
            tail.offset, tail.last_log, tail.best = 0, None, None
        if size == tail.offset:
            return
        events, offset = run.events.read_from(tail.offset)
        self.bytes_read += offset - tail.offset
        tail.offset = offset
        for event in events:
            if event.get("kind") == "log" and not event.get("final"):
                tail.last_log = event
            elif event.get("kind") == "best" and event.get("eval_loss") is not None:
                tail.best = event

    def _job(self, run: RunFolder, tail: _Tail) -> dict[str, str]:
        stamp = _stamp(run.job_file)
        if tail.job is None or stamp != tail.job_stamp:
            try:
                job = run.job()
                tail.job = {"stage": str(getattr(job, "stage", run.kind)),
                            "method": str(getattr(job, "finetuning_type", "-")),
                            "dataset": ",".join(getattr(job, "datasets", []) or [])
                            or str(getattr(job, "eval_dataset", "") or "?")}
            except Exception:  # noqa: BLE001 - a broken config file still shows up in the list
                tail.job = {"stage": run.kind, "method": "-", "dataset": "?"}
            tail.job_stamp = stamp
        return tail.job
