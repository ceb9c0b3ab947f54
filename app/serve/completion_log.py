"""What the API answered, so that feedback can name an answer by its completion id.

    runs/feedback/completions.jsonl     {"id", "t", "model", "messages", "answers": [one per choice]} per line
    runs/feedback/completions.1.jsonl   the previous file: when the current one holds `max_records` lines it
                                        becomes this one (replacing the older), so at most 2 x max_records
                                        answers are kept on disk, however long the server runs

Appended one whole line per write; the newest `max_records` also stay in memory, so feedback on a
recent answer never reads the files, and a restarted server still finds the older ones on disk.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

CURRENT = "completions.jsonl"
PREVIOUS = "completions.1.jsonl"
DEFAULT_MAX_RECORDS = 20_000


class CompletionLog:
    def __init__(self, folder: str | Path, max_records: int = DEFAULT_MAX_RECORDS):
        self.folder = Path(folder)
        self.max_records = max(1, int(max_records))
        self.current, self.previous = self.folder / CURRENT, self.folder / PREVIOUS
        self._recent: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lines: int | None = None  # lines in the current file, counted on first use
        self._lock = threading.Lock()

    def remember(self, completion_id: str, model: str, messages: list[dict[str, Any]], answers: list[str | None]
                 ) -> None:
        record = {"id": completion_id, "t": round(time.time(), 3), "model": model, "messages": messages,
                  "answers": answers}
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            self.folder.mkdir(parents=True, exist_ok=True)
            if self._lines is None:
                self._lines = _count_lines(self.current)
            if self._lines >= self.max_records:
                os.replace(self.current, self.previous)  # the bound: the oldest generation goes
                self._lines = 0
            with open(self.current, "a", encoding="utf-8") as handle:
                handle.write(line)
                handle.flush()
            self._lines += 1
            self._recent[completion_id] = record
            while len(self._recent) > self.max_records:
                self._recent.popitem(last=False)

    def find(self, completion_id: str) -> dict[str, Any] | None:
        with self._lock:
            if completion_id in self._recent:
                return self._recent[completion_id]
        needle = json.dumps(completion_id)
        for path in (self.current, self.previous):
            for record in _scan(path, needle):
                if record.get("id") == completion_id:
                    return record
        return None


def _count_lines(path: Path) -> int:
    if not path.is_file():
        return 0
    with open(path, "rb") as handle:
        return sum(1 for _ in handle)


def _scan(path: Path, needle: str) -> list[dict[str, Any]]:
    """Records of `path` whose line holds `needle` (only those are parsed)."""
    if not path.is_file():
        return []
    out = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if needle in line:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a torn line from a crash
    return out
