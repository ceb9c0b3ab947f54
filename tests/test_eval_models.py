"""`ftstudio eval` on every kind of model it accepts, through the real worker, on CPU: a model folder, a run's
final adapter and one of its checkpoints, a GGUF file; a run's validation split rebuilt as the trainer cut it;
Stop through the job manager keeps the rows already answered."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from test_train_support import isolated_worker, make_tiny_catalogue, make_tiny_model, run_in_process

from app.config import EvalConfig, JobConfig
from app.eval.results import PREDICTIONS, RESULTS, ROWS, read_jsonl, read_results
from app.train.runfolder import RunFolder

REPO = Path(__file__).resolve().parents[1]
LF_KEYS = {"predict_bleu-4", "predict_rouge-1", "predict_rouge-2", "predict_rouge-l", "predict_runtime",
           "predict_samples_per_second", "predict_steps_per_second", "eval_loss", "perplexity"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tiny-eval")
    model, catalogue = make_tiny_model(root / "model"), make_tiny_catalogue(root / "cat")
    job = JobConfig(model_name_or_path=str(model), dataset="tiny", dataset_dir=str(catalogue), cutoff_len=64,
                    per_device_train_batch_size=2, gradient_accumulation_steps=1, save_steps=1, max_steps=2,
                    learning_rate=1e-2, val_size=2, output_dir=str(root / "runs" / "tiny-lora"))
    assert run_in_process(job) == 0
    freeze = job.replace(finetuning_type="freeze", freeze_trainable_layers=1, val_size=0, save_steps=100,
                         output_dir=str(root / "runs" / "tiny-freeze"))
    assert run_in_process(freeze) == 0
    return {"model": model, "catalogue": catalogue, "run": RunFolder(root / "runs" / "tiny-lora"),
            "freeze": RunFolder(root / "runs" / "tiny-freeze")}


def evaluate(config: EvalConfig) -> tuple[int, Path]:
    from app.eval.worker import run_eval

    with isolated_worker():
        code = run_eval(config)
    return code, Path(str(config.output_dir))


def test_a_model_folder_a_run_a_checkpoint_and_a_full_run(tiny, tmp_path):
    common = dict(eval_dataset="tiny", dataset_dir=str(tiny["catalogue"]), max_new_tokens=6,
                  per_device_eval_batch_size=3)
    for name, keys in {"folder": {"model_name_or_path": str(tiny["model"])},
                       "run": {"adapter_name_or_path": str(tiny["run"].path)},
                       "checkpoint": {"adapter_name_or_path": str(tiny["run"].checkpoints / "checkpoint-1")},
                       "freeze": {"adapter_name_or_path": str(tiny["freeze"].path)}}.items():
        code, out = evaluate(EvalConfig(output_dir=str(tmp_path / name), **common, **keys))
        assert code == 0, RunFolder(out).tail_log()
        results = read_results(out)
        assert LF_KEYS <= set(results) and results["predict_samples"] == 8 and results["partial"] is False
        assert results["kind"] == {"folder": "base", "freeze": "full"}.get(name, "lora")
        lines = read_jsonl(out / PREDICTIONS)
        assert len(lines) == 8 and all(set(line) == {"prompt", "predict", "label"} for line in lines)
        assert lines[0]["prompt"].endswith("<|im_start|>assistant\n")  # rendered as LF writes it
        rows = read_jsonl(out / ROWS)
        assert [r["index"] for r in rows] == list(range(8)) and all(r["completion_tokens"] <= 6 for r in rows)
        events = RunFolder(out).events.read_all()
        progress = [e for e in events if e["kind"] == "progress" and e["phase"] == "generate"]
        assert [e["done"] for e in progress] == [3, 6, 8] and events[-1]["state"] == "finished"
        assert (out / "eval.yaml").is_file() and "ftstudio eval" in (out / "command.txt").read_text()


def test_validation_rows_are_the_ones_the_trainer_held_out(tiny, smol_tokenizer):
    from app.data.render import tokenize_sft
    from app.eval.rows import validation_rows
    from app.train.recipes import prepare_data

    job = tiny["run"].job()
    held = prepare_data(job, smol_tokenizer).eval
    rows = validation_rows(EvalConfig(validation_run=str(tiny["run"].path), eval_dataset=None), smol_tokenizer)
    ours = [tokenize_sft([{"messages": r.conversation}], smol_tokenizer, job.cutoff_len)[0][0]["input_ids"]
            for r in rows]
    assert len(rows) == 2 and sorted(ours) == sorted(held["input_ids"])


def test_stop_keeps_the_rows_already_answered(tiny, tmp_path):
    from app.jobs.manager import JobManager

    manager = JobManager(tmp_path / "runs")
    config = EvalConfig(model_name_or_path=str(tiny["model"]), eval_dataset="tiny", dataset_dir=str(tiny["catalogue"]),
                        max_new_tokens=400, per_device_eval_batch_size=1, output_dir=str(tmp_path / "runs" / "long"))
    run = manager.submit(config)
    deadline = time.time() + 300
    while not any(e["kind"] == "progress" for e in run.events.read_all()):
        assert time.time() < deadline and run.read_state()["state"] == "running", run.tail_log()
        time.sleep(0.5)
    manager.stop(run.name, wait=True)
    assert run.read_state()["state"] == "stopped", run.tail_log()
    results = json.loads((run.path / RESULTS).read_text())
    assert results["partial"] is True and 1 <= results["predict_samples"] < 8
    assert len(read_jsonl(run.path / PREDICTIONS)) == results["predict_samples"]
    assert manager.summaries()[0].kind == "eval"


@pytest.mark.slow
def test_a_gguf_file(tmp_path):
    from app.export import llamacpp
    from app.models.source import embedded_gguf_path

    gguf = embedded_gguf_path()
    code, out = evaluate(EvalConfig(model_name_or_path=str(gguf), dataset_dir=str(REPO), max_samples=2,
                                    max_new_tokens=8, output_dir=str(tmp_path / "gguf")))
    assert code == 0, RunFolder(out).tail_log()
    results = read_results(out)
    assert results["kind"] == "gguf" and results["backend"] == ("llama_cpp" if llamacpp.available() else "transformers")
    assert results["predict_samples"] == 2 and results["perplexity"] > 1
