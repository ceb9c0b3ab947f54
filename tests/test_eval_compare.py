"""Comparing evaluation runs: metrics table, bars per metric, predictions joined row by row, best/worst, CSV."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from app.eval.compare import (
    CompareError,
    bar_frame,
    finished_eval_runs,
    load_run,
    metrics_frame,
    predictions_frame,
    ranked,
    write_csv,
)
from app.eval.metrics import mean_scores, score_row
from app.eval.results import write_predictions, write_results

QUESTIONS = ["Who are you?", "你是谁？", "What is your name?"]
REFERENCES = ["I am Lumi, made by Polaris Lab.", "我是 Lumi，由 Polaris Lab 开发。", "My name is Lumi."]


def fake_run(root: Path, name: str, answers: list[str], references: list[str] = REFERENCES) -> Path:
    """An evaluation run folder written through the same writers the worker uses (no model needed)."""
    folder = root / name
    folder.mkdir(parents=True)
    scores = [score_row(a, r) for a, r in zip(answers, references)]
    write_predictions(folder, [{"prompt": f"<user>{q}", "predict": a, "label": r}
                               for q, a, r in zip(QUESTIONS, answers, references)],
                      [{"index": i, "question": q, **s} for i, (q, s) in enumerate(zip(QUESTIONS, scores))])
    write_results(folder, {f"predict_{k}": v for k, v in mean_scores(scores).items()}
                  | {"eval_loss": 1.0, "perplexity": 2.718, "model_label": name, "eval_dataset": "identity_eval",
                     "predict_samples": len(answers)})
    return folder


@pytest.fixture()
def runs(tmp_path) -> list:
    base = fake_run(tmp_path, "eval-base", ["I am SmolLM.", "我是一个助手。", "My name is Lumi."])
    tuned = fake_run(tmp_path, "eval-lumi", REFERENCES[:2] + ["I am SmolLM."])
    return [load_run(tuned), load_run(base)]


def test_metrics_table_and_one_bar_chart_per_metric(runs, tmp_path):
    assert finished_eval_runs(tmp_path) == ["eval-lumi", "eval-base"]  # newest first
    metrics = metrics_frame(runs)
    assert list(metrics["run"]) == ["eval-lumi", "eval-base"]
    assert {"BLEU-4", "ROUGE-1", "ROUGE-2", "ROUGE-L", "eval loss", "perplexity"} <= set(metrics.columns)
    assert "judge win" not in metrics  # no judge ran: no empty columns
    bars = bar_frame(metrics, "predict_rouge-l")
    assert list(bars.columns) == ["run", "label", "value"] and bars["value"].dtype == float
    assert list(bars["label"]) == ["eval-lumi", "eval-base"]  # the model labels (unique here)
    assert bars.set_index("run")["value"].to_dict() == metrics.set_index("run")["ROUGE-L"].to_dict()
    assert bar_frame(metrics, "judge_win_rate").empty
    nothing = metrics_frame([])  # before a run is picked the tab shows the headers, not 1, 2, 3
    assert nothing.empty and list(nothing.columns)[:4] == ["run", "model", "data", "rows"] and "ROUGE-L" in nothing
    assert bar_frame(nothing, "predict_rouge-l").empty


def test_predictions_join_row_by_row_with_per_row_rouge(runs):
    frame = predictions_frame(runs)
    assert list(frame.columns) == ["index", "question", "reference", "eval-lumi", "eval-lumi ROUGE-L", "eval-base",
                                   "eval-base ROUGE-L"]
    assert list(frame["question"]) == QUESTIONS
    assert list(frame["eval-lumi ROUGE-L"][:2]) == [100.0, 100.0]
    best = ranked(frame, ["eval-lumi", "eval-base"])
    worst = ranked(frame, ["eval-lumi", "eval-base"], worst=True)
    assert best.iloc[-1]["index"] == 2 and worst.iloc[0]["index"] == 2  # the row where the tune lost
    assert best["gain"].is_monotonic_decreasing and worst["gain"].is_monotonic_increasing
    alone = ranked(frame, ["eval-base"], top=1)
    assert len(alone) == 1 and alone.iloc[0]["index"] == 2 and "gain" not in alone


def test_runs_on_different_rows_are_refused(tmp_path, runs):
    other = load_run(fake_run(tmp_path, "eval-other", ["x", "y", "z"], ["a", "b", "c"]))
    with pytest.raises(CompareError, match="same rows"):
        predictions_frame([runs[0], other])
    with pytest.raises(CompareError, match="not finished"):
        load_run(tmp_path / "nowhere")


def test_a_bare_llamafactory_predictions_file_is_scored_as_lf_does(tmp_path, runs):
    lf = tmp_path / "lf-predict"
    lf.mkdir()
    (lf / "generated_predictions.jsonl").write_text("".join(
        json.dumps({"prompt": q, "predict": "I am Lumi.", "label": r}, ensure_ascii=False) + "\n"
        for q, r in zip(QUESTIONS, REFERENCES)), encoding="utf-8")
    (lf / "predict_results.json").write_text(json.dumps({"predict_rouge-l": 50.0}))
    frame = predictions_frame([runs[0], load_run(lf)])
    assert list(frame["lf-predict ROUGE-L"]) == [score_row("I am Lumi.", r)["rouge-l"] for r in REFERENCES]


def test_csv_keeps_chinese_text(runs, tmp_path):
    path = write_csv(predictions_frame(runs), tmp_path / "out" / "predictions.csv")
    assert path.read_bytes().startswith("\ufeff".encode())  # Excel reads UTF-8 with a BOM
    back = pd.read_csv(path, encoding="utf-8-sig")
    assert back["question"].tolist() == QUESTIONS and back.loc[1, "reference"] == REFERENCES[1]


def test_the_train_tabs_run_list_marks_the_best_checkpoint(tmp_path):
    from app.jobs.manager import RunSummary
    from app.train.runfolder import EventLog
    from app.ui import plots

    run = tmp_path / "r"
    run.mkdir()
    log = EventLog(run / "events.jsonl")
    log.append("best", step=20, eval_loss=0.81234, path=str(run / "checkpoints" / "checkpoint-20"))
    log.append("best", step=40, eval_loss=0.51234, path=str(run / "checkpoints" / "checkpoint-40"))
    marked = RunSummary("r", str(run), "finished", "sft", "lora", "identity", None, 80, 80, 0.4, None)
    plain = RunSummary("p", str(tmp_path / "p"), "finished", "sft", "lora", "identity", None, 8, 8, 0.4, None)
    frame = plots.runs_frame(plots.with_best([marked, plain]))
    assert frame["best"].tolist() == ["★ checkpoint-40 (0.5123)", ""]
