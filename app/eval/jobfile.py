"""What the YAML given to `ftstudio eval` means.

    an LLaMA-Factory predict YAML (do_predict, eval_dataset, adapter_name_or_path, ...)  loaded as is;
        training-only keys are noted and ignored
    a studio eval.yaml (an evaluation run's own file)                                    loaded as is
    a training job (runs/<name>/job.yaml, examples/identity_lora.yaml)                  "evaluate that run":
        its folder's adapter (or full model), its base model, template, data folder, cutoff and seed; its
        eval_dataset, else its validation split (val_size), else the default eval set; the results go to a
        new evaluation run beside it (runs/eval-<name>-<time>), never into the training run
Flags given on the command line override whatever the YAML says.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from app.config import ConfigError, EvalConfig, JobConfig
from app.config.schema import read_yaml_mapping

PREDICT_MARKERS = ("do_predict", "predict_with_generate")


def is_training_job(data: dict[str, Any]) -> bool:
    """A training job names `dataset` and does not ask to predict (a training job's adapter_name_or_path is
    where its training started, not what to evaluate)."""
    return ("dataset" in data and "validation_run" not in data
            and not any(data.get(key) not in (None, False, "false") for key in PREDICT_MARKERS))


def _run_folder(path: Path, job: JobConfig) -> Path:
    """The trained run the job file stands for: its output_dir, else the folder the file sits in."""
    candidates = [Path(job.output_dir).expanduser()] if job.output_dir else []
    candidates.append(path.resolve().parent)
    for folder in candidates:
        if (folder / "adapter").is_dir() or (folder / "checkpoints").is_dir():
            return folder.resolve()
    where = " or ".join(str(c) for c in dict.fromkeys(candidates))
    raise ConfigError([f"adapter_name_or_path: the training job {path} has no trained run yet (no adapter/ in "
                       f"{where}); train it first, or pass --adapter_name_or_path"])


def from_training_job(path: Path, data: dict[str, Any], overrides: dict[str, Any],
                      notes: list[str]) -> dict[str, Any]:
    """EvalConfig keys that evaluate the run a training job file describes."""
    job = JobConfig.from_dict(data)
    run = _run_folder(path, job)
    out: dict[str, Any] = {
        "adapter_name_or_path": str(run), "model_name_or_path": job.model_name_or_path, "template": job.template,
        "dataset_dir": job.dataset_dir, "cutoff_len": job.cutoff_len, "seed": job.seed,
        "output_dir": str(run.parent / f"eval-{run.name}-{time.strftime('%Y%m%d-%H%M%S')}"),
    }
    if "eval_dataset" not in overrides and "validation_run" not in overrides:
        if job.eval_datasets:
            out["eval_dataset"] = job.eval_dataset
        elif job.val_size:
            out |= {"validation_run": str(run), "eval_dataset": None}
        else:
            notes.append(f"{run.name} has no validation split: evaluating on {EvalConfig().eval_dataset} "
                         "(choose another set with --eval_dataset)")
    notes.append(f"evaluating training run {run} (its adapter, base model and template)")
    return out


def load_eval_config(path: str | None, overrides: dict[str, Any], notes: list[str] | None = None) -> EvalConfig:
    """The EvalConfig for `ftstudio eval [YAML] [--key value ...]`."""
    notes = notes if notes is not None else []
    data = read_yaml_mapping(path) if path else {}
    if path and is_training_job(data):
        data = from_training_job(Path(path), data, overrides, notes)
    return EvalConfig.from_dict(data | overrides, notes)
