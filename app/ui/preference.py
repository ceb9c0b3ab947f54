"""Preference capture: a side-by-side verdict becomes one DPO row in a catalogue dataset.

    save_preference(dataset_dir, "chat_preferences", Preference(prompt, chosen, rejected, system, history))

The first row creates `<dataset_dir>/data/<name>.jsonl` and registers it in dataset_info.json as an
alpaca-shaped ranking set (LLaMA-Factory's schema, so the same file feeds LLaMA-Factory's DPO too):

    {"instruction": ..., "input": "", "chosen": ..., "rejected": ..., "system": ..., "history": [[q, a], ...]}

Later rows are appended under the entry's own column names, one line per vote (a .jsonl file grows by
a line; nothing is rewritten, so a vote costs the same on the millionth row as on the first; a reader
sees whole lines), under a lock file, so two browser sessions voting at once both land. An older
.json (array) entry is still accepted, replaced atomically as a whole.
No gradio here: the Chat tab calls these, unit tests call them directly.
"""

from __future__ import annotations

import json
import re
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.atomic import append_line, write_bytes_atomic
from app.data.catalogue import CATALOGUE_NAME, DatasetSpec, load_catalogue, register_dataset
from app.data.errors import DataError
from app.data.files import read_rows
from app.filelock import file_lock

DEFAULT_DATASET = "chat_preferences"
# LLaMA-Factory role -> column name in the file (alpaca with history: prompt/query/chosen/rejected).
COLUMNS = {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected",
           "system": "system", "history": "history"}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
APPENDABLE = (".jsonl", ".json")

_lock = threading.Lock()  # threads of this process; the lock file covers other processes


class PreferenceError(ValueError):
    """A verdict that cannot be saved; the message says why and what to do."""


@dataclass
class Preference:
    prompt: str
    chosen: str
    rejected: str
    system: str = ""
    history: list[tuple[str, str]] = field(default_factory=list)  # earlier (user, assistant) turns


@dataclass
class Saved:
    name: str
    path: Path  # the data file
    rows: int  # rows in the file after this save
    created: bool  # this save registered the dataset


def check_name(name: str) -> str:
    name = (name or "").strip()
    if not NAME_PATTERN.match(name):
        raise PreferenceError(f"Dataset name {name!r} is not usable: use letters, digits, '_', '-' or '.' "
                              "(it names the file in data/ too).")
    return name


def preference_row(pref: Preference, columns: dict[str, str] | None = None) -> dict[str, Any]:
    """The JSON row for `pref` under `columns` (role -> file column; default: alpaca names).

    Roles the entry does not map (system, history) are left out; a system prompt or history that the
    entry has no column for would be silently lost, so that raises instead.
    """
    cols = COLUMNS if columns is None else columns
    prompt, chosen, rejected = pref.prompt.strip(), pref.chosen.strip(), pref.rejected.strip()
    if not prompt:
        raise PreferenceError("There is no prompt to save: send a message in side-by-side mode first.")
    if not chosen or not rejected:
        raise PreferenceError("Both sides need a reply before one can be preferred.")
    if chosen == rejected:
        raise PreferenceError("Both replies are identical: there is nothing to prefer (try a temperature above 0).")
    row: dict[str, Any] = {cols["prompt"]: prompt}
    if cols.get("query"):
        row[cols["query"]] = ""
    row[cols["chosen"]], row[cols["rejected"]] = chosen, rejected
    for role, value in (("system", pref.system.strip()), ("history", [[q, a] for q, a in pref.history])):
        if cols.get(role):
            row[cols[role]] = value
        elif value:
            raise PreferenceError(f"The dataset has no {role!r} column, so this conversation's {role} "
                                  "would be lost: choose another dataset name.")
    return row


def history_pairs(messages: Sequence[dict[str, str]]) -> list[tuple[str, str]]:
    """(user, assistant) pairs of a conversation of plain-text messages (system turns skipped)."""
    turns = [m for m in messages if m.get("role") in ("user", "assistant")]
    pairs, pending = [], None
    for message in turns:
        if message["role"] == "user":
            pending = message.get("content") or ""
        elif pending is not None:
            pairs.append((pending, message.get("content") or ""))
            pending = None
    return pairs


def _usable_entry(spec: DatasetSpec) -> None:
    """Raise unless `spec` is an alpaca ranking set in a .json/.jsonl file this module can append to."""
    why = None
    if spec.problems:
        why = "; ".join(p.message for p in spec.problems)
    elif not spec.ranking or spec.formatting != "alpaca":
        why = f"it is not an alpaca preference set (formatting {spec.formatting}, ranking {spec.ranking})"
    elif not all(spec.columns.get(k) for k in ("prompt", "chosen", "rejected")):
        why = "its columns do not name prompt, chosen and rejected"
    elif spec.path is None or spec.path.suffix.lower() not in APPENDABLE or spec.path.is_dir():
        why = f"its file {spec.file_name!r} is not a .jsonl or .json file"
    if why:
        raise PreferenceError(f"Dataset {spec.name!r} already exists and cannot take chat preferences: {why}. "
                              "Choose another name.")


@contextmanager
def _locked(folder: Path, name: str) -> Iterator[None]:
    with _lock, file_lock(folder / f".{name}.lock"):
        yield


def _append(path: Path, row: dict[str, Any]) -> None:
    """Append `row`: one line at the end of a .jsonl file; a .json array is replaced atomically."""
    if path.suffix.lower() == ".jsonl":
        append_line(path, json.dumps(row, ensure_ascii=False))
        return
    rows = json.loads(path.read_text(encoding="utf-8-sig")) if path.exists() and path.stat().st_size else []
    if not isinstance(rows, list):
        raise PreferenceError(f"{path} does not hold a JSON array: cannot append a row.")
    rows.append(row)
    write_bytes_atomic(path, (json.dumps(rows, ensure_ascii=False, indent=2) + "\n").encode("utf-8"))


def _catalogue(dataset_dir: Path) -> dict[str, DatasetSpec]:
    if not (dataset_dir / CATALOGUE_NAME).is_file():
        return {}
    try:
        return load_catalogue(dataset_dir)
    except DataError as exc:
        raise PreferenceError(f"Cannot read the catalogue: {exc}") from None


def save_preference(dataset_dir: str | Path, name: str, pref: Preference) -> Saved:
    """Append one preference row to dataset `name`, registering it (ranking: true) on first use."""
    folder = Path(dataset_dir)
    name = check_name(name)
    with _locked(folder / "data", name):
        spec = _catalogue(folder).get(name)
        if spec is not None:
            _usable_entry(spec)
            assert spec.path is not None
            _append(spec.path, preference_row(pref, spec.columns))
            return Saved(name, spec.path, count_file_rows(spec.path), created=False)
        row = preference_row(pref)
        with tempfile.TemporaryDirectory(prefix="ftstudio-pref-") as tmp:
            first = Path(tmp) / f"{name}.jsonl"
            first.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
            try:
                spec = register_dataset(folder, name, first, formatting="alpaca", ranking=True,
                                        columns=dict(COLUMNS))
            except DataError as exc:
                raise PreferenceError(f"Could not register {name!r}: {exc}") from None
        assert spec.path is not None
        return Saved(name, spec.path, count_file_rows(spec.path), created=True)


def count_file_rows(path: Path) -> int:
    """Rows in a data file; a .jsonl file counts its non-empty lines without parsing them."""
    if path.suffix.lower() == ".jsonl":
        with open(path, "rb") as handle:
            return sum(1 for line in handle if line.strip())
    return len(read_rows(path, str(path)).rows)


def count_rows(dataset_dir: str | Path, name: str) -> int | None:
    """Rows in dataset `name` (None when the catalogue has no such entry or its file is unreadable)."""
    try:
        spec = _catalogue(Path(dataset_dir)).get((name or "").strip())
    except PreferenceError:
        return None
    if spec is None or spec.path is None or not spec.path.is_file():
        return None
    return count_file_rows(spec.path)
