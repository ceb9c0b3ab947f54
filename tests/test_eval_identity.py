"""The point of it all: on held-out identity questions with reference answers (identity_eval, none of them in
the training set), the trained adapter beats the base model on ROUGE-L and on the references' loss. The
training is the session's one identity run (the `identity_run` fixture in conftest.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app.eval.compare import load_run, metrics_frame, predictions_frame, ranked
from app.eval.results import PREDICTIONS, read_jsonl, read_results
from app.train.runfolder import RunFolder

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
SETTINGS = ["--eval_dataset", "identity_eval", "--max_new_tokens", "32", "--per_device_eval_batch_size", "12"]


def ftstudio_eval(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "app.cli", "eval", *args, *SETTINGS], cwd=REPO, capture_output=True,
                          text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def scored(identity_run: RunFolder, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evals")
    ftstudio_eval(str(identity_run.job_file), "--output_dir", str(root / "adapter"))  # "evaluate that run"
    ftstudio_eval("--dataset_dir", str(REPO), "--output_dir", str(root / "base"))
    return {"adapter": root / "adapter", "base": root / "base"}


def test_the_adapter_beats_the_base_on_heldout_questions(scored):
    adapter, base = read_results(scored["adapter"]), read_results(scored["base"])
    assert adapter["predict_samples"] == base["predict_samples"] == 24
    assert adapter["kind"] == "lora" and base["kind"] == "base"
    assert adapter["predict_rouge-l"] > base["predict_rouge-l"] + 10, (adapter, base)
    assert adapter["predict_bleu-4"] > base["predict_bleu-4"]
    assert adapter["eval_loss"] < base["eval_loss"] and adapter["perplexity"] < base["perplexity"]
    answers = [line["predict"] for line in read_jsonl(scored["adapter"] / PREDICTIONS)]
    assert sum("Lumi" in a for a in answers) >= 18, answers  # the new name, in both languages


def test_the_comparison_shows_where_the_tune_helped(scored):
    runs = [load_run(scored["adapter"]), load_run(scored["base"])]
    metrics = metrics_frame(runs).set_index("run")
    assert metrics.loc["adapter", "ROUGE-L"] > metrics.loc["base", "ROUGE-L"]
    best = ranked(predictions_frame(runs), ["adapter", "base"], top=5)
    assert (best["gain"] > 0).all() and best["adapter"].str.contains("Lumi").all()
