"""Evaluation during training: a separate eval_dataset, early stopping, the best checkpoint, trackers.

A tiny random llama trained at a learning rate far too high, with its eval loss measured on a set whose
answers differ from the training set's: the eval loss stops improving within a few steps, early stopping
ends the run long before max_steps, and load_best_model_at_end makes the best checkpoint the final adapter.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file
from test_train_support import make_tiny_catalogue, make_tiny_model, run_in_process

from app.config import ConfigError, JobConfig
from app.train.runfolder import RunFolder

OTHER = "Paris is the capital of France, and Berlin is in Germany."


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tiny-tracking")
    catalogue = make_tiny_catalogue(root / "cat")
    rows = [{"instruction": q, "input": "", "output": OTHER} for q in ("Capital of France?", "Where is Berlin?",
                                                                       "Name a city.", "What is Paris?")]
    (catalogue / "data" / "other.json").write_text(json.dumps(rows))
    info = json.loads((catalogue / "dataset_info.json").read_text()) | {"other": {"file_name": "data/other.json"}}
    (catalogue / "dataset_info.json").write_text(json.dumps(info))
    return {"model": make_tiny_model(root / "model"), "catalogue": catalogue}


def tiny_job(tiny: dict, out: Path, **changes) -> JobConfig:
    base = dict(model_name_or_path=str(tiny["model"]), dataset="tiny", dataset_dir=str(tiny["catalogue"]),
                cutoff_len=64, per_device_train_batch_size=2, gradient_accumulation_steps=1, logging_steps=1,
                save_steps=1000, learning_rate=1e-2, max_steps=2, lr_scheduler_type="constant", output_dir=str(out))
    return JobConfig(**(base | changes))


# -- configuration -----------------------------------------------------------------------------
def test_training_keys_follow_llamafactory_rules():
    assert JobConfig.from_dict({"report_to": ["tensorboard", "wandb"]}).trackers == ["tensorboard", "wandb"]
    assert JobConfig.from_dict({"report_to": "none"}).trackers == []
    assert JobConfig(eval_dataset="identity_eval").eval_datasets == ["identity_eval"]
    cases = {
        "val_size: cannot be combined with eval_dataset": {"eval_dataset": "identity_eval", "val_size": 0.1},
        "early_stopping_steps: needs an eval loss": {"early_stopping_steps": 3},
        "load_best_model_at_end: needs an eval loss": {"load_best_model_at_end": True},
        "load_best_model_at_end: save_steps (50) must be a multiple of eval_steps (20)":
            {"load_best_model_at_end": True, "val_size": 0.1, "eval_steps": 20},
        "report_to: unknown tracker nosuch": {"report_to": "tensorboard,nosuch"},
    }
    for message, data in cases.items():
        with pytest.raises(ConfigError) as err:
            JobConfig.from_dict(data)
        assert any(p.startswith(message) for p in err.value.problems), err.value.problems


# -- early stopping, the best checkpoint, TensorBoard ----------------------------------------------
@pytest.mark.slow
def test_early_stopping_ends_a_run_whose_eval_loss_rises(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", "")  # the worker points it into the run; undone after the test
    job = tiny_job(tiny, tmp_path / "run", eval_dataset="other", learning_rate=0.5, max_steps=30, save_steps=1,
                   eval_steps=1, early_stopping_steps=2, load_best_model_at_end=True, save_total_limit=2,
                   report_to="tensorboard")
    assert run_in_process(job) == 0
    run = RunFolder(tmp_path / "run")
    events = run.events.read_all()
    assert events[-1]["state"] == "finished", run.tail_log()
    evals = [(e["step"], e["eval_loss"]) for e in events if e["kind"] == "eval"]
    best_step, best_loss = min(evals[1:], key=lambda pair: pair[1])  # step 0 is the baseline, before any checkpoint
    last_step = max(e["step"] for e in events if e["kind"] == "log" and not e.get("final"))
    assert last_step < 30  # ended by early stopping, not by max_steps
    assert [loss for _, loss in evals[-2:]] >= [best_loss, best_loss]  # the two last evaluations: no better
    assert any(e["kind"] == "stage" and e["name"] == "early_stopping" for e in events)
    best_events = [e for e in events if e["kind"] == "best"]
    assert best_events[-1]["step"] == best_step and Path(best_events[-1]["path"]).is_dir()
    # load_best_model_at_end: the final adapter is the best checkpoint's, which rotation kept
    final = load_file(str(run.adapter / "adapter_model.safetensors"))
    best = load_file(str(Path(best_events[-1]["path"]) / "adapter_model.safetensors"))
    assert final.keys() == best.keys() and all((final[k] == best[k]).all() for k in final)
    assert len(run.complete_checkpoints()) <= 2

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list((run.path / "tensorboard").glob("events.out.tfevents.*"))
    assert files, "no TensorBoard event file in the run folder"
    accumulator = EventAccumulator(str(run.path / "tensorboard"))
    accumulator.Reload()
    scalars = accumulator.Tags()["scalars"]
    assert "train/loss" in scalars and "eval/loss" in scalars, scalars
    assert len(accumulator.Scalars("eval/loss")) == len(evals)
    assert [round(s.value, 4) for s in accumulator.Scalars("eval/loss")] == [round(loss, 4) for _, loss in evals]


@pytest.mark.slow
def test_wandb_runs_offline_inside_the_run_folder(tiny, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR", "WANDB_PROJECT"):
        monkeypatch.setenv(name, "")  # recorded, so that what the worker sets is undone after the test
        monkeypatch.delenv(name)
    assert run_in_process(tiny_job(tiny, tmp_path / "wb", report_to="wandb")) == 0
    run = RunFolder(tmp_path / "wb")
    assert run.read_state()["state"] == "finished", run.tail_log()
    offline = list((run.path / "wandb").glob("offline-run-*"))
    assert offline, list(run.path.iterdir())
    assert list(offline[0].glob("*.wandb"))  # the run's history, to `wandb sync` later if wanted


@pytest.mark.slow
def test_a_missing_tracker_package_fails_before_the_model_loads(tiny, tmp_path):
    assert run_in_process(tiny_job(tiny, tmp_path / "cm", report_to="comet_ml")) == 1
    events = RunFolder(tmp_path / "cm").events.read_all()
    assert "pip install comet-ml" in events[-1]["error"]
    assert not any(e["kind"] == "stage" and e["name"] == "model_ready" for e in events)


def test_early_stopping_is_refused_only_where_there_is_no_eval_loss():
    for key, value in (("early_stopping_steps", 2), ("load_best_model_at_end", True)):
        with pytest.raises(ConfigError) as err:
            JobConfig.from_dict({"stage": "grpo", "dataset": "grpo_math_demo", "val_size": 0.1, key: value})
        assert any(p.startswith(f"{key}: stage grpo has no eval loss") for p in err.value.problems), err.value.problems
    for stage, extra in (("sft", {}), ("dpo", {}), ("dpo", {"pref_loss": "orpo"}), ("dpo", {"pref_loss": "simpo"}),
                         ("kto", {}), ("rm", {}), ("pt", {})):
        job = JobConfig.from_dict({"stage": stage, "val_size": 0.1, "early_stopping_steps": 2} | extra)
        assert job.early_stopping_steps == 2


@pytest.mark.slow
def test_early_stopping_and_the_best_checkpoint_for_kto(tiny, tmp_path):
    """KTO (TRL's KTOTrainer) carries the same callbacks: a run whose eval loss stops improving ends early."""
    info = json.loads((tiny["catalogue"] / "dataset_info.json").read_text())
    repo_info = json.loads((Path(__file__).resolve().parents[1] / "dataset_info.json").read_text())
    (tiny["catalogue"] / "data" / "kto_demo.json").write_text(
        (Path(__file__).resolve().parents[1] / "data" / "kto_demo.json").read_text())
    (tiny["catalogue"] / "dataset_info.json").write_text(json.dumps(info | {"kto_demo": repo_info["kto_demo"]}))
    job = tiny_job(tiny, tmp_path / "kto", stage="kto", dataset="kto_demo", val_size=8, learning_rate=0.5,
                   max_steps=30, save_steps=1, eval_steps=1, early_stopping_steps=1, load_best_model_at_end=True,
                   save_total_limit=2)
    assert run_in_process(job) == 0
    run = RunFolder(tmp_path / "kto")
    events = run.events.read_all()
    assert events[-1]["state"] == "finished", run.tail_log()
    last_step = max(e["step"] for e in events if e["kind"] == "log" and not e.get("final"))
    assert last_step < 30 and any(e["kind"] == "stage" and e["name"] == "early_stopping" for e in events)
    best = [e for e in events if e["kind"] == "best"][-1]  # the baseline at step 0 has no checkpoint: never best
    assert 0 < best["step"] < last_step
    final = load_file(str(run.adapter / "adapter_model.safetensors"))
    kept = load_file(str(Path(best["path"]) / "adapter_model.safetensors"))
    assert final.keys() == kept.keys() and all((final[k] == kept[k]).all() for k in final)
