"""Reading dataset files into raw rows: JSON (an array, or one object per line), JSONL, CSV, Parquet, text.

Rows are numbered from 1 in the order a reader sees them: array items, non-blank JSONL lines, CSV data rows
(the header is not a row), Parquet rows, non-blank text lines. A text file holds one example per non-blank
line, as LLaMA-Factory (through `datasets`' text builder) reads it; keep a paragraph on one line.
Broken rows are reported, not fatal, so one pass finds every problem in a file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.data.errors import Problem

BROKEN: Any = object()  # placeholder for a row that could not be parsed (its problem is already recorded)


@dataclass
class ReadResult:
    rows: list[Any] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def read_rows(path: Path, display: str) -> ReadResult:
    """All rows of one file. A file-level failure gives no rows and one problem."""
    if not path.exists():
        return ReadResult(problems=[Problem(display, None, None, "file not found")])
    if not path.is_file():
        return ReadResult(problems=[Problem(display, None, None, "not a file")])
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            return _read_json(path, display)
        if suffix == ".jsonl":
            return _read_json_lines(_read_text(path), display)
        if suffix == ".csv":
            return _read_csv(path, display)
        if suffix == ".parquet":
            return _read_parquet(path, display)
        if suffix == ".txt":
            lines = [line for line in _read_text(path).splitlines() if line.strip()]
            return ReadResult(rows=[{"text": line} for line in lines])
    except UnicodeDecodeError as e:
        return ReadResult(problems=[Problem(display, None, None, f"not UTF-8 text ({e.reason})")])
    supported = ".json, .jsonl, .csv, .parquet, .txt"
    return ReadResult(
        problems=[Problem(display, None, None, f"unsupported file type {suffix or '(none)'!r} ({supported})")]
    )


def _read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8-sig")


def _read_json(path: Path, display: str) -> ReadResult:
    text = _read_text(path)
    if not text.strip():
        return ReadResult(problems=[Problem(display, None, None, "empty file")])
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        body = text.strip()
        if body.startswith("[") or body.splitlines()[0].strip() == "{" or "\n" not in body:
            msg = f"broken JSON at line {e.lineno}, column {e.colno}: {e.msg}"
            return ReadResult(problems=[Problem(display, None, None, msg)])
        return _read_json_lines(text, display)  # one object per line, as `datasets` accepts in .json
    if isinstance(data, list):
        return ReadResult(rows=data)
    if isinstance(data, dict):
        return ReadResult(rows=[data])
    msg = f"expected a JSON array of rows or one JSON object per line, got {type_name(data)}"
    return ReadResult(problems=[Problem(display, None, None, msg)])


def _read_json_lines(text: str, display: str) -> ReadResult:
    result = ReadResult()
    row = 0
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        row += 1
        try:
            result.rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            result.rows.append(BROKEN)
            msg = f"broken JSON on line {line_no}, column {e.colno}: {e.msg}"
            result.problems.append(Problem(display, row, None, msg))
    return result


def _read_csv(path: Path, display: str) -> ReadResult:
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        return ReadResult(problems=[Problem(display, None, None, "empty file")])
    except pd.errors.ParserError as e:
        return ReadResult(problems=[Problem(display, None, None, f"broken CSV: {str(e).strip()}")])
    unnamed = [c for c in frame.columns if str(c).startswith("Unnamed: ")]
    if unnamed:
        msg = f"the header has {len(unnamed)} empty column name(s); name every column in the first line"
        return ReadResult(problems=[Problem(display, None, None, msg)])
    return ReadResult(rows=frame.to_dict(orient="records"))


def _read_parquet(path: Path, display: str) -> ReadResult:
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as e:  # ArrowInvalid is a ValueError, ArrowIOError an OSError
        return ReadResult(problems=[Problem(display, None, None, f"unreadable Parquet file: {e}")])
    return ReadResult(rows=[plain(r) for r in frame.to_dict(orient="records")])


def plain(value: Any) -> Any:
    """numpy arrays/scalars and NaN (as Parquet gives them) -> plain Python lists, scalars and None."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return plain(value.tolist())
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def type_name(value: Any) -> str:
    """How a JSON user would call this value's type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
