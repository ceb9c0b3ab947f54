"""Several evaluation runs side by side: the tables and charts of the Evaluate tab, and their CSV.

    metrics_frame(runs)       one row per run: BLEU-4, ROUGE-1/2/L, eval loss, perplexity, speed, judge rates
    bar_frame(metrics, key)   one metric as (run, value): one bar chart per metric
    predictions_frame(runs)   one row per question: reference, each run's answer and its ROUGE-L
    ranked(frame, runs, ...)  best or worst rows first: the first run's ROUGE-L minus the others' mean (its gain),
                              or its own ROUGE-L when it is alone
Plain pandas, no gradio: the tab shows these frames, the CLI or a notebook can use them as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from app.atomic import write_text_atomic
from app.eval.results import PREDICTIONS, RESULTS, read_predictions, read_results

# predict_results.json key -> column title (LF's metric names, the studio's extras)
METRIC_COLUMNS = {
    "predict_bleu-4": "BLEU-4",
    "predict_rouge-1": "ROUGE-1",
    "predict_rouge-2": "ROUGE-2",
    "predict_rouge-l": "ROUGE-L",
    "eval_loss": "eval loss",
    "perplexity": "perplexity",
    "predict_samples_per_second": "samples/s",
    "judge_win_rate": "judge win",
    "judge_tie_rate": "judge tie",
    "judge_loss_rate": "judge loss",
}
CHARTED = ("predict_bleu-4", "predict_rouge-1", "predict_rouge-2", "predict_rouge-l", "perplexity", "judge_win_rate")


class CompareError(ValueError):
    """The runs cannot be compared row by row; the message names them."""


@dataclass
class EvalRun:
    name: str
    path: Path
    results: dict[str, Any]

    @property
    def label(self) -> str:
        """What was evaluated, for a legend: the model label and the data."""
        return f"{self.results.get('model_label', '?')} on {self.results.get('eval_dataset', '?')}"


def load_run(path: str | Path) -> EvalRun:
    path = Path(path).expanduser()
    if not (path / RESULTS).is_file() or not (path / PREDICTIONS).is_file():
        raise CompareError(f"{path.name}: no {RESULTS} yet (not an evaluation run, or not finished)")
    return EvalRun(path.name, path, read_results(path))


def finished_eval_runs(runs_dir: str | Path) -> list[str]:
    """Names of the run folders that hold an evaluation's scores, newest first."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if (p / RESULTS).is_file() and (p / PREDICTIONS).is_file()]
    return [p.name for p in sorted(found, key=lambda p: (p / RESULTS).stat().st_mtime, reverse=True)]


EMPTY_METRICS = ["run", "model", "data", "rows", *list(METRIC_COLUMNS.values())[:6]]  # before any run is picked


def metrics_frame(runs: list[EvalRun]) -> pd.DataFrame:
    if not runs:
        return pd.DataFrame(columns=EMPTY_METRICS)
    rows = []
    for run in runs:
        row: dict[str, Any] = {"run": run.name, "model": run.results.get("model_label", ""),
                               "data": run.results.get("eval_dataset", ""), "rows": run.results.get("predict_samples")}
        for key, title in METRIC_COLUMNS.items():
            value = run.results.get(key)
            row[title] = round(float(value), 4) if isinstance(value, (int, float)) else None
        rows.append(row)
    frame = pd.DataFrame(rows, columns=["run", "model", "data", "rows", *METRIC_COLUMNS.values()])
    return frame.dropna(axis=1, how="all")  # judge columns only when a judge ran


def bar_frame(metrics: pd.DataFrame, key: str) -> pd.DataFrame:
    """(run, label, value) of one metric, for a bar chart; empty when no run has it. The label is the short
    model name (e.g. identity-lora, base) unless two runs share it, then the run's name."""
    title = METRIC_COLUMNS[key]
    if title not in metrics:
        return pd.DataFrame({"run": pd.Series(dtype=str), "label": pd.Series(dtype=str),
                             "value": pd.Series(dtype=float)})
    unique = metrics["model"].is_unique and bool(metrics["model"].astype(bool).all())
    frame = metrics.assign(label=metrics["model"] if unique else metrics["run"])
    frame = frame[["run", "label", title]].rename(columns={title: "value"}).dropna()
    return frame.astype({"run": str, "label": str, "value": float})


def axis_top(key: str, values: Any) -> float:
    """Where a bar chart's value axis ends: bars start at 0, and a score's axis spans its whole scale."""
    if key.startswith("predict_"):
        return 100.0
    if key.startswith("judge_"):
        return 1.0
    return float(max(values)) * 1.1 if len(values) else 1.0


def predictions_frame(runs: list[EvalRun]) -> pd.DataFrame:
    """index, question, reference, then `<run>` (its answer) and `<run> ROUGE-L` for each run."""
    if not runs:
        return pd.DataFrame(columns=["index", "question", "reference"])
    tables = [read_predictions(run.path) for run in runs]
    first = tables[0]
    for run, table in zip(runs[1:], tables[1:]):
        if len(table) != len(first) or any(a.get("label") != b.get("label") for a, b in zip(first, table)):
            raise CompareError(f"{runs[0].name} and {run.name} were not evaluated on the same rows (compare runs "
                               "with the same eval_dataset and max_samples)")
    frame = pd.DataFrame({
        "index": [row.get("index", i) for i, row in enumerate(first)],
        "question": [row.get("question") or row.get("prompt", "") for row in first],
        "reference": [row.get("label", "") for row in first],
    })
    for run, table in zip(runs, tables):
        frame[run.name] = [row.get("predict", "") for row in table]
        frame[f"{run.name} ROUGE-L"] = [_score(row) for row in table]
    return frame


def _score(row: dict[str, Any]) -> float:
    """A row's ROUGE-L (from eval_rows.jsonl; computed as LF does for a bare LF predictions file)."""
    if isinstance(row.get("rouge-l"), (int, float)):
        return float(row["rouge-l"])
    from app.eval.metrics import score_row

    return score_row(str(row.get("predict", "")), str(row.get("label", "")))["rouge-l"]


def ranked(frame: pd.DataFrame, runs: list[str], worst: bool = False, top: int | None = None) -> pd.DataFrame:
    """Rows ordered by the first run's ROUGE-L gain over the others' mean (best first, or worst first)."""
    if frame.empty or not runs:
        return frame
    own = frame[f"{runs[0]} ROUGE-L"]
    others = [f"{name} ROUGE-L" for name in runs[1:]]
    key = own - frame[others].mean(axis=1) if others else own
    order = key.sort_values(ascending=worst, kind="stable").index
    out = frame.loc[order]
    if others:
        out = out.assign(gain=key.loc[order].round(4))
    return out.head(top) if top else out


def write_csv(frame: pd.DataFrame, path: str | Path) -> Path:
    """The table as UTF-8 CSV with a BOM (Excel then shows Chinese text correctly)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "\ufeff" + frame.to_csv(index=False))
    return path
