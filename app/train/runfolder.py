"""The run folder: the contract between a worker (training, evaluation, ...) and whoever watches it.

    runs/<name>/job.yaml  command.txt  state.json  events.jsonl  worker.log  checkpoints/  adapter/

The configuration file names the kind of job: `job.yaml` a training run (JobConfig), `eval.yaml` an
evaluation (EvalConfig); each config class says its file name and the `ftstudio` command that runs it.

Everything a UI needs to rebuild a run after a restart lives in these files; nothing lives only in
a process's memory. Writers append or replace atomically, so a reader never sees half a record.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.atomic import write_json_atomic, write_text_atomic
from app.config import CONFIG_KINDS, JobConfig, Schema
from app.filelock import file_lock

STATES = ("queued", "running", "finished", "failed", "stopped")
ACTIVE_STATES = ("queued", "running")
# What read_state() says when state.json cannot tell: never "queued", which would let a scheduler start
# a run that may already be running (a torn write, a worker started from a terminal that has not
# written its state yet).
NO_STATE = "new"  # the config file is there, state.json not yet: nobody asked the manager to run it
UNREADABLE = "unreadable"  # state.json exists but is not a JSON object (the error names the file)


class EventLog:
    """Append-only JSON lines; every line has "t" (unix time) and "kind"."""

    def __init__(self, path: Path):
        self.path = path

    def append(self, kind: str, **fields: Any) -> dict:
        event = {"t": round(time.time(), 3), "kind": kind, **fields}
        line = json.dumps(event, ensure_ascii=False) + "\n"
        # One write() of a whole line in append mode: concurrent readers see whole lines or nothing new.
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
        return event

    def read_from(self, offset: int = 0) -> tuple[list[dict], int]:
        """Events after byte `offset`, and the offset to continue from (a partial last line waits)."""
        if not self.path.exists():
            return [], 0
        with open(self.path, "rb") as handle:
            handle.seek(offset)
            chunk = handle.read()
        end = chunk.rfind(b"\n") + 1
        events = []
        for raw in chunk[:end].splitlines():
            try:
                events.append(json.loads(raw))
            except json.JSONDecodeError:
                continue  # a torn line from a crash; skip it rather than lose the rest
        return events, offset + end

    def read_all(self) -> list[dict]:
        return self.read_from(0)[0]


@dataclass
class RunFolder:
    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    command_file = property(lambda self: self.path / "command.txt")
    state_file = property(lambda self: self.path / "state.json")
    log_file = property(lambda self: self.path / "worker.log")
    checkpoints = property(lambda self: self.path / "checkpoints")
    adapter = property(lambda self: self.path / "adapter")

    @property
    def events(self) -> EventLog:
        return EventLog(self.path / "events.jsonl")

    def _config_class(self) -> type[Schema]:
        for cls in CONFIG_KINDS:
            if (self.path / cls.FILE_NAME).is_file():
                return cls
        return JobConfig

    @property
    def job_file(self) -> Path:
        """The run's configuration file: job.yaml (training), eval.yaml (evaluation), ..."""
        return self.path / self._config_class().FILE_NAME

    @property
    def kind(self) -> str:
        """The `ftstudio` command that runs this folder's job: train, eval, ..."""
        return self._config_class().COMMAND

    def exists(self) -> bool:
        return any((self.path / cls.FILE_NAME).is_file() for cls in CONFIG_KINDS)

    def create(self, job: Schema) -> None:
        """Write the job's config file and command.txt (the exact line that reproduces the run). A file that
        already holds that text is left alone: the run list sorts by the config file's time, and a worker
        re-creating its folder on start must not move its run up the list (an open run picker would
        re-order under the user's click)."""
        self.path.mkdir(parents=True, exist_ok=True)
        command = (f"ftstudio {job.COMMAND} {self.path / job.FILE_NAME}\n"
                   f"# or, flag by flag:\n{job.command_line()}\n")
        for path, text in ((self.path / job.FILE_NAME, job.to_yaml()), (self.command_file, command)):
            if not path.is_file() or path.read_text(encoding="utf-8", errors="replace") != text:
                write_text_atomic(path, text)

    def job(self) -> Any:
        """The run's configuration (a JobConfig for training, an EvalConfig for evaluation, ...)."""
        return self._config_class().load(self.job_file)

    def read_state(self) -> dict:
        """state.json as a dict; a missing file reads as `new` (or `missing` without a config file), an
        unreadable one as `unreadable` with the reason in `error`: neither is ever mistaken for `queued`."""
        try:
            text = self.state_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {"state": NO_STATE if self.exists() else "missing"}
        except (OSError, UnicodeDecodeError) as exc:
            return {"state": UNREADABLE, "error": f"{self.state_file}: cannot read it ({exc})"}
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            return {"state": UNREADABLE,
                    "error": f"{self.state_file}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"}
        if not isinstance(data, dict) or not isinstance(data.get("state", ""), str):
            return {"state": UNREADABLE, "error": f"{self.state_file}: expected a JSON object with a 'state'"}
        return data

    @contextmanager
    def _state_lock(self) -> Iterator[None]:
        """Serialise read-modify-write of state.json between the manager and the worker (two processes)."""
        with file_lock(self.path / ".state.lock"):
            yield

    def write_state(self, **changes: Any) -> dict:
        with self._state_lock():
            current = self.read_state()
            base = {} if current.get("state") in (NO_STATE, UNREADABLE, "missing") else current
            state = base | changes | {"updated": round(time.time(), 3)}
            write_json_atomic(self.state_file, state)
        return state

    def tail_log(self, n_bytes: int = 4000) -> str:
        if not self.log_file.exists():
            return ""
        with open(self.log_file, "rb") as handle:
            handle.seek(max(0, self.log_file.stat().st_size - n_bytes))
            return handle.read().decode("utf-8", errors="replace")

    def complete_checkpoints(self) -> list[Path]:
        """Checkpoints in step order; only fully written ones (they appear by atomic rename)."""
        if not self.checkpoints.is_dir():
            return []
        found = [p for p in self.checkpoints.glob("checkpoint-*")
                 if p.is_dir() and p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()]
        return sorted(found, key=lambda p: int(p.name.split("-")[-1]))

    def latest_checkpoint(self) -> Path | None:
        found = self.complete_checkpoints()
        return found[-1] if found else None
