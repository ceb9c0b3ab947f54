"""Training rows the loop writes, in the catalogue's openai formatting, and the sets that hold them.

    sft  {"messages": [{"role": "user", "content": ...}, ..., {"role": "assistant", "content": <answer>}]}
    dpo  {"messages": [... ending with the user's turn], "chosen": {"role": "assistant", "content": ...},
          "rejected": {"role": "assistant", "content": ...}}                          (ranking: true)

The shape keeps a whole conversation (system prompt, earlier turns) as it was asked, and LLaMA-Factory
reads the same entries. Every row is checked with the catalogue's own row validation before it is
written; a set is registered in dataset_info.json with its first row and appended to (one whole line per
write, under a lock file) after that.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from app.data.catalogue import CATALOGUE_NAME, DatasetSpec, load_catalogue, parse_entry, register_dataset
from app.data.errors import DataError, Problem
from app.data.formats import _Row, convert_row
from app.filelock import file_lock

Message = dict[str, str]
ENTRIES: dict[str, dict[str, Any]] = {
    "sft": {"formatting": "openai", "columns": {"messages": "messages", "tools": "tools"}},
    "dpo": {"formatting": "openai", "ranking": True,
            "columns": {"messages": "messages", "chosen": "chosen", "rejected": "rejected"}},
}
_threads = threading.Lock()  # threads of this process; the lock file covers other processes


class SetError(ValueError):
    """A set the loop cannot write to (an entry of another shape under the name, an unreadable catalogue)."""


def plain_messages(messages: list[dict[str, Any]]) -> list[Message]:
    """role + text content of each message (content parts joined); other keys dropped."""
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
        out.append({"role": str(message.get("role", "")), "content": "" if content is None else str(content)})
    return out


def sft_row(prompt: list[Message], reply: str) -> dict[str, Any]:
    return {"messages": [*prompt, {"role": "assistant", "content": reply}]}


def pref_row(prompt: list[Message], chosen: str, rejected: str) -> dict[str, Any]:
    return {"messages": list(prompt), "chosen": {"role": "assistant", "content": chosen},
            "rejected": {"role": "assistant", "content": rejected}}


def example_row(example: dict[str, Any], stage: str) -> dict[str, Any]:
    """A normalised example (app.data.formats.load_examples) written back as a row of this module's shape."""
    if stage == "dpo":
        return pref_row(example["prompt"], example["chosen"][0]["content"], example["rejected"][0]["content"])
    row: dict[str, Any] = {"messages": example["messages"]}
    if example.get("tools"):
        row["tools"] = json.dumps(example["tools"], ensure_ascii=False)
    return row


def _probe(stage: str) -> DatasetSpec:
    return parse_entry("probe", {"file_name": "probe.jsonl", **ENTRIES[stage]}, Path("."))


def row_problems(row: dict[str, Any], stage: str, where: str = "feedback") -> list[Problem]:
    """What the catalogue's validation says about one row ([] when it trains)."""
    problems: list[Problem] = []
    convert_row(_probe(stage), stage, row, _Row(where, 1, problems))
    return problems


@contextmanager
def _locked(folder: Path, name: str) -> Iterator[None]:
    with _threads, file_lock(folder / f".{name}.lock"):
        yield


def find_set(dataset_dir: Path, name: str) -> DatasetSpec | None:
    if not (dataset_dir / CATALOGUE_NAME).is_file():
        return None
    try:
        return load_catalogue(dataset_dir).get(name)
    except DataError as exc:
        raise SetError(f"Cannot read {dataset_dir / CATALOGUE_NAME}: {exc}") from None


def _check_entry(spec: DatasetSpec, stage: str) -> Path:
    want = ENTRIES[stage]
    if spec.problems or spec.path is None:
        why = "; ".join(p.message for p in spec.problems) or "it has no local file"
    elif spec.formatting != want["formatting"] or spec.ranking != bool(want.get("ranking")):
        ranking = bool(want.get("ranking"))
        why = f"it is {spec.formatting} with ranking {spec.ranking}, not openai with ranking {ranking}"
    elif spec.path.suffix.lower() != ".jsonl" or spec.path.is_dir():
        why = f"its file {spec.file_name!r} is not a .jsonl file"
    elif spec.columns.get("messages") != "messages":
        why = "its messages column is not named 'messages'"
    else:
        return spec.path
    raise SetError(f"Dataset {spec.name!r} in {spec.catalogue_file} cannot take {stage} rows: {why}. Rename or "
                   "remove that entry.")


def append_rows(dataset_dir: str | Path, name: str, stage: str, rows: list[dict[str, Any]]) -> Path:
    """Append `rows` (already validated) to set `name`, registering it with the first ones; its data file."""
    folder = Path(dataset_dir)
    with _locked(folder / "data", name):
        spec = find_set(folder, name)
        if spec is None:
            return _register(folder, name, stage, rows).path  # type: ignore[return-value]
        path = _check_entry(spec, stage)
        data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
        with open(path, "ab") as handle:
            if handle.tell() and not _ends_with_newline(path):
                data = b"\n" + data
            handle.write(data)  # one write of whole lines: a reader sees them all or none
            handle.flush()
            os.fsync(handle.fileno())
        return path


def write_set(dataset_dir: str | Path, name: str, stage: str, rows: list[dict[str, Any]]) -> DatasetSpec:
    """Register `rows` as a new set `name` (replacing an entry of that name), validated as a whole."""
    folder = Path(dataset_dir)
    with _locked(folder / "data", name):
        return _register(folder, name, stage, rows, overwrite=True)


def _register(folder: Path, name: str, stage: str, rows: list[dict[str, Any]], overwrite: bool = False) -> DatasetSpec:
    entry = ENTRIES[stage]
    with tempfile.TemporaryDirectory(prefix="ftstudio-loop-") as tmp:
        first = Path(tmp) / f"{name}.jsonl"
        first.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
        try:
            return register_dataset(folder, name, first, formatting=entry["formatting"], columns=entry["columns"],
                                    ranking=bool(entry.get("ranking")), overwrite=overwrite)
        except DataError as exc:
            raise SetError(f"Could not register {name!r}: {exc}") from None


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


def count_rows(dataset_dir: str | Path, name: str) -> int:
    """Rows in set `name` (0 when it does not exist yet)."""
    try:
        spec = find_set(Path(dataset_dir), name)
    except SetError:
        return 0
    if spec is None or spec.path is None or not spec.path.is_file():
        return 0
    with open(spec.path, "rb") as handle:
        return sum(1 for line in handle if line.strip())


def read_set_rows(dataset_dir: str | Path, name: str) -> list[dict[str, Any]]:
    spec = find_set(Path(dataset_dir), name)
    if spec is None or spec.path is None or not spec.path.is_file():
        return []
    out = []
    for line in spec.path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a torn last line after a crash: the rest still counts
    return out
