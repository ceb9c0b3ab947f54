"""The files an evaluation run writes, in LLaMA-Factory's names and keys, and the readers of them.

    generated_predictions.jsonl  one line per row: {"prompt", "predict", "label"}  (LF's file, as LF writes it:
                                 the prompt as rendered by the chat template, special tokens included)
    predict_results.json         {"predict_bleu-4", "predict_rouge-1", "predict_rouge-2", "predict_rouge-l",
                                  "predict_runtime", "predict_samples_per_second", "predict_steps_per_second",
                                  "eval_loss", "perplexity", ...}; LF's 0-100 scale; studio extras beside them
                                 (what was evaluated, the judge's rates when one ran)
    eval_rows.jsonl              the studio's per-row detail: index, dataset, question, every metric, the
                                 reference's loss, token counts, finish reason (what the Compare view joins on)

Each is written whole through app.atomic: a reader sees the old file or the new one, never half.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.atomic import write_json_atomic, write_text_atomic

PREDICTIONS = "generated_predictions.jsonl"
RESULTS = "predict_results.json"
ROWS = "eval_rows.jsonl"
METRIC_KEYS = ("predict_bleu-4", "predict_rouge-1", "predict_rouge-2", "predict_rouge-l")


def _jsonl(items: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items)


def write_predictions(folder: Path, predictions: list[dict[str, str]], rows: list[dict[str, Any]]) -> None:
    write_text_atomic(folder / PREDICTIONS, _jsonl(predictions))
    write_text_atomic(folder / ROWS, _jsonl(rows))


def write_results(folder: Path, results: dict[str, Any]) -> None:
    write_json_atomic(folder / RESULTS, results)


def update_results(folder: Path, changes: dict[str, Any]) -> dict[str, Any]:
    """Merge keys into predict_results.json (the judge adds its rates); returns the new content."""
    merged = read_results(folder) | changes
    write_results(folder, merged)
    return merged


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {number} is not JSON ({exc.msg})") from None
    return out


def read_results(folder: Path) -> dict[str, Any]:
    path = folder / RESULTS
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def predictions_file(path: str | Path) -> Path:
    """An evaluation run folder or a generated_predictions.jsonl itself -> the predictions file."""
    path = Path(path).expanduser()
    found = path if path.is_file() else path / PREDICTIONS
    if not found.is_file():
        raise FileNotFoundError(f"{path}: no {PREDICTIONS} (is it an evaluation run that finished?)")
    return found


def read_predictions(path: str | Path) -> list[dict[str, Any]]:
    """Every row of a predictions file (LF's or ours), with the studio's row detail when it is beside it."""
    file = predictions_file(path)
    predictions = read_jsonl(file)
    details = read_jsonl(file.parent / ROWS)
    if len(details) == len(predictions):
        return [detail | prediction for prediction, detail in zip(predictions, details)]
    return [{"index": i} | prediction for i, prediction in enumerate(predictions)]


def is_eval_run(folder: Path) -> bool:
    return (folder / RESULTS).is_file() and (folder / PREDICTIONS).is_file()
