"""The run folder: the contract between a training worker and whoever watches it.

    runs/<name>/job.yaml  command.txt  state.json  events.jsonl  worker.log  checkpoints/  adapter/

Everything a UI needs to rebuild a run after a restart lives in these files; nothing lives only in
a process's memory. Writers append or replace atomically, so a reader never sees half a record.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.config import JobConfig

STATES = ("queued", "running", "finished", "failed", "stopped")
ACTIVE_STATES = ("queued", "running")


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, ensure_ascii=False, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


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

    job_file = property(lambda self: self.path / "job.yaml")
    command_file = property(lambda self: self.path / "command.txt")
    state_file = property(lambda self: self.path / "state.json")
    log_file = property(lambda self: self.path / "worker.log")
    checkpoints = property(lambda self: self.path / "checkpoints")
    adapter = property(lambda self: self.path / "adapter")

    @property
    def events(self) -> EventLog:
        return EventLog(self.path / "events.jsonl")

    def exists(self) -> bool:
        return self.job_file.is_file()

    def create(self, job: JobConfig) -> None:
        """Write job.yaml and command.txt (the exact line that reproduces the run)."""
        self.path.mkdir(parents=True, exist_ok=True)
        job.save(self.job_file)
        self.command_file.write_text(f"ftstudio train {self.job_file}\n# or, flag by flag:\n"
                                     f"{job.command_line()}\n", encoding="utf-8")

    def job(self) -> JobConfig:
        return JobConfig.load(self.job_file)

    def read_state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return {"state": "queued" if self.exists() else "missing"}

    def write_state(self, **changes: Any) -> dict:
        state = self.read_state() | changes | {"updated": round(time.time(), 3)}
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
