"""The loop's history: every version, attempt and rollback, append-only, and what is served now.

    runs/loop/history.jsonl   one JSON line per event ("t", "kind"):
        start      version 0: the adapter served before any feedback (adapter null = the base model)
        candidate  a trained and evaluated version: its run, data, both scores, promoted or not, and why
        failed     an attempt whose training or evaluation did not finish (stage, error, run)
        rollback   serve an earlier version again

The served version is the one named by the last start, promoted candidate or rollback. An API server
that follows the loop reads this file and swaps its adapter when that changes; nothing else is needed
to deploy, so a promotion made by the UI, the CLI or the API's own loop thread reaches the server alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.train.runfolder import EventLog

HISTORY_FILE = "history.jsonl"


class LoopError(ValueError):
    """Something the user asked of the loop cannot be done; the message says why."""


@dataclass
class Version:
    number: int
    adapter: str | None  # a run folder or adapter folder; None = the base model alone
    entry: dict[str, Any]


class History:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.log = EventLog(self.folder / HISTORY_FILE)

    def entries(self) -> list[dict[str, Any]]:
        return self.log.read_all()

    def append(self, kind: str, **fields: Any) -> dict[str, Any]:
        self.folder.mkdir(parents=True, exist_ok=True)
        return self.log.append(kind, **fields)

    def ensure_start(self, adapter: str | None) -> None:
        """Write version 0 on first use."""
        if not any(e["kind"] == "start" for e in self.entries()):
            self.append("start", version=0, adapter=adapter, promoted=True, reason="the starting point")

    def versions(self) -> dict[int, Version]:
        """Every version that has an adapter to serve (the start and each candidate), by number."""
        found = {}
        for entry in self.entries():
            if entry["kind"] in ("start", "candidate"):
                found[int(entry["version"])] = Version(int(entry["version"]), entry.get("adapter"), entry)
        return found

    def served(self) -> Version | None:
        """The version served now (None before the loop started)."""
        number = None
        for entry in self.entries():
            if entry["kind"] == "start" or entry["kind"] == "rollback" or (
                    entry["kind"] == "candidate" and entry.get("promoted")):
                number = int(entry["version"])
        return None if number is None else self.versions().get(number)

    def next_version(self) -> int:
        numbers = [int(e["version"]) for e in self.entries() if e["kind"] in ("start", "candidate", "failed")]
        return max(numbers, default=0) + 1

    def consumed_rows(self, feedback_set: str) -> int:
        """Rows of `feedback_set` the last attempt on it saw (new rows are counted from there)."""
        seen = 0
        for entry in self.entries():
            data = entry.get("data") or {}
            if entry["kind"] in ("candidate", "failed") and data.get("feedback_set") == feedback_set:
                seen = int(data.get("feedback_total", 0))
        return seen

    def servable(self, number: int) -> Version:
        """Version `number`, if it may be served again (the start, or a candidate that was promoted)."""
        version = self.versions().get(number)
        if version is None:
            known = ", ".join(str(n) for n in sorted(self.versions())) or "none yet"
            raise LoopError(f"There is no version {number} (versions: {known}).")
        if version.entry["kind"] == "candidate" and not version.entry.get("promoted"):
            raise LoopError(f"Version {number} was never promoted ({version.entry.get('reason', 'rejected')}): only "
                            "versions that were served can be rolled back to.")
        if version.adapter and not Path(version.adapter).exists():
            raise LoopError(f"Version {number}'s adapter {version.adapter} no longer exists.")
        return version
