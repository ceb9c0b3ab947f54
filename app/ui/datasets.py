"""The Dataset tab's logic: catalogue table, paged preview, column mapping and upload checks (no gradio).

Row counts and previews read whole files, so they are cached by the files' size and mtime: the
table is counted when first shown and again only when a file or its catalogue entry changes. The cache
is bounded (least recently used out first): at most MAX_CACHED_ENTRIES answers holding at most
MAX_CACHED_ROWS rows in all, so browsing many or large datasets does not grow the studio without end.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pandas as pd

from app.data.catalogue import DatasetSpec, list_data_files, load_catalogue, parse_entry
from app.data.errors import DataError, Problem
from app.data.files import BROKEN, read_rows
from app.data.formats import load_examples

PAGE_SIZE = 10
CATALOGUE_COLUMNS = ["name", "format", "rows", "stage", "file", "check"]
ROLES = ("prompt", "query", "response", "system", "history", "messages", "chosen", "rejected", "kto_tag", "text")
# Column names each role is guessed from when a file is uploaded (first match wins).
GUESSES = {
    "prompt": ("instruction", "prompt", "question"),
    "query": ("input", "query"),
    "response": ("output", "response", "answer"),
    "system": ("system",),
    "history": ("history",),
    "messages": ("conversations", "messages", "conversation"),
    "chosen": ("chosen",),
    "rejected": ("rejected",),
    "kto_tag": ("kto_tag", "label"),  # LLaMA-Factory's KTO demo keeps the good/bad flag in "label"
    "text": ("text", "content"),
}

MAX_CACHED_ENTRIES = 64
MAX_CACHED_ROWS = 200_000


class BoundedCache:
    """An LRU map whose entries also have a cost (rows held); both the count and the total are bounded."""

    def __init__(self, max_entries: int = MAX_CACHED_ENTRIES, max_cost: int = MAX_CACHED_ROWS):
        self.max_entries, self.max_cost = max_entries, max_cost
        self._items: OrderedDict[tuple, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.cost = 0

    def get(self, key: tuple) -> tuple[bool, Any]:
        with self._lock:
            if key not in self._items:
                return False, None
            self._items.move_to_end(key)
            return True, self._items[key][0]

    def put(self, key: tuple, value: Any, cost: int) -> None:
        with self._lock:
            if key in self._items:
                self.cost -= self._items.pop(key)[1]
            if cost > self.max_cost:
                return  # larger than the whole cache: computed again when asked
            self._items[key] = (value, cost)
            self.cost += cost
            while len(self._items) > self.max_entries or self.cost > self.max_cost:
                self.cost -= self._items.popitem(last=False)[1][1]

    def __len__(self) -> int:
        return len(self._items)


_cache = BoundedCache()


def _stamp(spec: DatasetSpec) -> tuple:
    """What a cached answer for this entry depends on: the entry itself and its files' size and mtime."""
    files: list[Path] = []
    if spec.path is not None and spec.path.is_dir():
        files = list_data_files(spec.path)
    elif spec.path is not None and spec.path.exists():
        files = [spec.path]
    stats = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    return spec.name, json.dumps(spec.raw, sort_keys=True, default=str), stats


def _cached(kind: str, spec: DatasetSpec, compute: Any) -> Any:
    key = (kind, *_stamp(spec))
    found, value = _cache.get(key)
    if found:
        return value
    value = compute()
    _cache.put(key, value, len(value) if isinstance(value, list) else 1)
    return value


def count_rows(spec: DatasetSpec) -> tuple[int | None, list[Problem]]:
    """(rows usable for the entry's own stage, problems), cached."""

    if spec.hub_id and spec.path is None:
        return None, []  # a hub dataset is read when a job starts, never while listing the catalogue

    def compute() -> tuple[int | None, list[Problem]]:
        try:
            return len(load_examples(spec, spec.stage)), []
        except DataError as e:
            return None, e.problems

    return _cached("count", spec, compute)


def catalogue_frame(dataset_dir: str | Path) -> pd.DataFrame:
    """name, format, rows, stage, file, check (ok or the first problem) of every catalogue entry."""
    try:
        specs = load_catalogue(dataset_dir)
    except DataError as e:
        return pd.DataFrame([["", "", "", "", "", str(e.problems[0])]], columns=CATALOGUE_COLUMNS)
    rows = []
    for spec in specs.values():
        n_rows, problems = count_rows(spec)
        fmt = spec.formatting + (" (ranking)" if spec.ranking else "")
        check = "ok" if not problems else f"{len(problems)} problem(s): {problems[0]}"
        file = spec.file_name or spec.display
        rows.append([spec.name, fmt, "" if n_rows is None else n_rows, spec.stage, file, check])
    return pd.DataFrame(rows, columns=CATALOGUE_COLUMNS)


def datasets_for_stage(dataset_dir: str | Path, stage: str) -> list[str]:
    """Catalogue names that feed `stage` (entries with problems of their own are left out)."""
    try:
        specs = load_catalogue(dataset_dir)
    except DataError:
        return []
    return [s.name for s in specs.values() if not s.problems and stage in s.stages]


def raw_rows(spec: DatasetSpec) -> list[dict[str, Any]]:
    """Every row of an entry's files as a flat dict (nested values as JSON text), cached."""

    def compute() -> list[dict[str, Any]]:
        if spec.path is None:
            return []
        files = list_data_files(spec.path) if spec.path.is_dir() else [spec.path]
        out = []
        for path in files:
            for row in read_rows(path, path.name).rows:
                if row is BROKEN:
                    continue
                row = row if isinstance(row, dict) else {"value": row}
                out.append({str(k): _cell(v) for k, v in row.items()})
        return out

    return _cached("rows", spec, compute)


def _cell(value: Any) -> Any:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, ensure_ascii=False)
    return value


def preview_page(dataset_dir: str | Path, name: str | None, page: int) -> tuple[pd.DataFrame, int, int]:
    """(rows of page `page` (0-based, clamped), the page shown, number of pages) of one dataset."""
    specs = load_catalogue(dataset_dir) if name else {}
    if not name or name not in specs:
        return pd.DataFrame(), 0, 0
    rows = raw_rows(specs[name])
    pages = max(1, -(-len(rows) // PAGE_SIZE))
    page = min(max(page, 0), pages - 1)
    chunk = rows[page * PAGE_SIZE:(page + 1) * PAGE_SIZE]
    columns = list(dict.fromkeys(k for r in chunk for k in r))
    frame = pd.DataFrame(chunk, columns=columns).fillna("")
    frame.insert(0, "#", range(page * PAGE_SIZE + 1, page * PAGE_SIZE + len(chunk) + 1))
    return frame, page, pages


def file_columns(path: str | Path, sample: int = 200) -> list[str]:
    """Column names seen in the first rows of a data file ([] when it cannot be read)."""
    path = Path(path)
    rows = [r for r in read_rows(path, path.name).rows[:sample] if isinstance(r, dict)]
    return list(dict.fromkeys(str(k) for r in rows for k in r))


def roles_for(formatting: str, ranking: bool) -> list[str]:
    """The column roles a user maps for this formatting (LLaMA-Factory's names)."""
    if formatting == "alpaca":
        roles = ["prompt", "query", "system", "history"] + (
            ["chosen", "rejected"] if ranking else ["response", "kto_tag", "text"])
    else:  # kto_tag: each answer tagged good (true) or bad (false), a KTO set
        roles = ["messages", "system"] + (["chosen", "rejected"] if ranking else ["kto_tag"])
    return roles


def guess_mapping(formatting: str, ranking: bool, columns: list[str]) -> dict[str, str]:
    """A first guess of role -> file column, from the usual names."""
    lower = {c.lower(): c for c in columns}
    mapping = {}
    for role in roles_for(formatting, ranking):
        found = next((lower[g] for g in GUESSES[role] if g in lower), None)
        if found and found not in mapping.values():
            mapping[role] = found
    if formatting == "alpaca" and not ranking and mapping.get("text") and not mapping.get("prompt"):
        return {"text": mapping["text"]}  # a plain-text file: pre-training
    mapping.pop("text", None)
    return mapping


def entry_columns(formatting: str, ranking: bool, mapping: dict[str, str | None]) -> dict[str, str]:
    """The catalogue `columns` for a mapping: only the roles this formatting uses, only those set."""
    allowed = roles_for(formatting, ranking)
    return {role: col for role, col in mapping.items() if role in allowed and col}


def validate_upload(path: str | Path, formatting: str, ranking: bool,
                    mapping: dict[str, str | None]) -> tuple[int, str, list[Problem]]:
    """(rows, stage, problems) of an uploaded file read as the entry it would get; names row and field."""
    path = Path(path)
    entry: dict[str, Any] = {"file_name": path.name, "formatting": formatting,
                             "columns": entry_columns(formatting, ranking, mapping)}
    if ranking:
        entry["ranking"] = True
    spec = parse_entry("upload", entry, path.parent)
    spec.dataset_dir = Path(".")  # problems name the file as the user knows it, not its temp folder
    try:
        return len(load_examples(spec, spec.stage)), spec.stage, []
    except DataError as e:
        # A problem of the would-be catalogue entry is a problem of this file's column mapping (the user
        # never saw the entry): say so, naming the file.
        catalogue = spec.catalogue_file
        return 0, spec.stage, [Problem(path.name, None, "column mapping", p.message) if p.file == catalogue else p
                               for p in e.problems]
