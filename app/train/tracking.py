"""Evaluation and tracking during training: a separate eval set, early stopping, the best checkpoint, report_to.

recipes.py calls three hooks, one line each:
    with_eval_dataset(job, tokenizer, prepare_data)  LF's `eval_dataset`: the eval loss on other catalogue sets
                                                      (checks the trackers' packages first: before the model loads)
    trainer_arguments(job, output_dir, has_eval)      report_to (+ where each tracker writes), best-model metric
    callbacks(job, callbacks)                         EarlyStoppingCallback (LF's `early_stopping_steps`) and
                                                      BestCheckpoint (the `best` event, the best checkpoint kept)

Trackers write inside the run folder and make no network call unless the user configured one:
TensorBoard event files in <run>/tensorboard; W&B offline in <run>/wandb unless WANDB_MODE or WANDB_API_KEY
is set; MLflow into <run>/mlruns unless MLFLOW_TRACKING_URI is set.

Event (events.jsonl): `best` step, eval_loss, path: a checkpoint that holds the lowest eval loss so far.
A run that early stopping ends gets a `stage` event named early_stopping before its `done`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import EarlyStoppingCallback, TrainerCallback

from app.config import JobConfig
from app.train.checkpoints import rotate

# report_to name -> (module that must import, pip package that provides it)
PACKAGES: dict[str, tuple[str, str]] = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow"),
    "comet_ml": ("comet_ml", "comet-ml"),
    "clearml": ("clearml", "clearml"),
    "neptune": ("neptune", "neptune"),
    "trackio": ("trackio", "trackio"),
    "swanlab": ("swanlab", "swanlab"),
    "dvclive": ("dvclive", "dvclive"),
    "codecarbon": ("codecarbon", "codecarbon"),
    "azure_ml": ("azureml", "azureml-core"),
    "dagshub": ("dagshub", "dagshub"),
    "flyte": ("flytekit", "flytekit"),
    "kubeflow": ("kubeflow", "kubeflow-training"),
}


def check_trackers(job: JobConfig) -> list[str]:
    """The transformers report_to list for the job; ValueError naming the package a tracker lacks."""
    names = [n for n in job.trackers if n != "all"] if "all" not in job.trackers else [
        n for n, (module, _) in PACKAGES.items() if importlib.util.find_spec(module)]
    for name in names:
        module, package = PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise ValueError(f"report_to: {name} needs the {package} package, which is not installed: "
                             f"pip install {package} (or remove {name} from report_to)")
    return names


def with_eval_dataset(job: JobConfig, tokenizer: Any, prepare_data: Callable[[JobConfig, Any], Any]) -> Any:
    """Prepared data whose eval split is the job's eval_dataset (None when the job has none)."""
    check_trackers(job)  # a missing package is found before the model loads
    if not job.eval_datasets:
        return None
    from app.data.validate import validate_or_raise

    validate_or_raise(job.dataset_dir, job.eval_datasets, job.stage)
    # dataclasses.replace, not job.replace: these halves need no validation (the eval keys need an eval set)
    train = prepare_data(dataclasses.replace(job, eval_dataset=None), tokenizer)
    held = prepare_data(dataclasses.replace(job, dataset=job.eval_dataset, eval_dataset=None), tokenizer)
    message = f"{train.message}; eval on {job.eval_dataset}: {held.message}"
    return type(train)(train.train, held.train, train.n_rows, message)


def _tracker_environment(job: JobConfig, run_dir: Path, names: list[str]) -> None:
    """Point each tracker into the run folder; never online unless the user asked for it."""
    if "tensorboard" in names:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tensorboard")
    if "wandb" in names:
        if not os.environ.get("WANDB_MODE") and not os.environ.get("WANDB_API_KEY"):
            os.environ["WANDB_MODE"] = "offline"
        os.environ.setdefault("WANDB_DIR", str(run_dir))
        os.environ.setdefault("WANDB_PROJECT", "ftstudio")
    if "mlflow" in names:
        os.environ.setdefault("MLFLOW_TRACKING_URI", (run_dir / "mlruns").resolve().as_uri())
        os.environ.setdefault("MLFLOW_EXPERIMENT_NAME", "ftstudio")


def trainer_arguments(job: JobConfig, output_dir: Path, has_eval: bool) -> dict:
    """TrainingArguments for trackers and the best model (output_dir: the run's checkpoints/ folder)."""
    names = check_trackers(job)
    run_dir = Path(output_dir).parent
    _tracker_environment(job, run_dir, names)
    args: dict[str, Any] = {"report_to": names or "none", "run_name": run_dir.name}
    if has_eval and (job.early_stopping_steps or job.load_best_model_at_end):
        args |= {"metric_for_best_model": job.metric_for_best_model, "greater_is_better": False,
                 "load_best_model_at_end": job.load_best_model_at_end}
        if job.load_best_model_at_end:
            # The atomic checkpoint writer renames each checkpoint out of a staging folder after the Trainer
            # rotated there; BestCheckpoint rotates the real folder itself, always keeping the best one.
            args["save_total_limit"] = None
    return args


class BestCheckpoint(TrainerCallback):
    """Writes a `best` event when a checkpoint holds the lowest eval loss so far; keeps that checkpoint."""

    def __init__(self, job: JobConfig, events: Any, is_writer: bool, stopper: EarlyStoppingCallback | None):
        self.job = job
        self.events = events
        self.is_writer = is_writer
        self.stopper = stopper
        self.best: tuple[int, float] | None = None  # (step, eval_loss)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if state.global_step == 0:
            return  # the baseline before training: no checkpoint can hold it (KTO's starts at its lowest, 0.5)
        loss = (metrics or {}).get("eval_loss")
        if loss is not None and (self.best is None or loss < self.best[1]):
            self.best = (state.global_step, float(loss))

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if self.best is not None and self.best[0] == state.global_step and self.is_writer and self.events:
            self.events.append("best", step=state.global_step, eval_loss=self.best[1], path=str(folder))
        if self.best is not None and args.load_best_model_at_end:
            best = Path(args.output_dir) / f"checkpoint-{self.best[0]}"
            if best.is_dir():  # the Trainer recorded the staging path, gone after the rename
                state.best_model_checkpoint = str(best)
            if args.should_save:
                rotate(args.output_dir, self.job.save_total_limit, state.best_model_checkpoint)

    def on_train_end(self, args, state, control, **kwargs):
        if not (self.is_writer and self.events):
            return
        patience = self.job.early_stopping_steps
        if self.stopper is not None and patience and self.stopper.early_stopping_patience_counter >= patience:
            best = f"; best eval loss {self.best[1]:.4f} at step {self.best[0]}" if self.best else ""
            self.events.append("stage", name="early_stopping", step=state.global_step,
                               message=f"stopped early at step {state.global_step}: eval loss did not improve for "
                                       f"{patience} evaluations{best}")
        if args.load_best_model_at_end and state.best_model_checkpoint:
            self.events.append("stage", name="best_model", path=state.best_model_checkpoint,
                               message=f"the final adapter is the best checkpoint, "
                                       f"{Path(state.best_model_checkpoint).name}")


def callbacks(job: JobConfig, existing: list) -> list:
    """Callbacks to add to the trainer's (the EventCallback among `existing` lends its event log)."""
    writer = next((c for c in existing if hasattr(c, "events")), None)
    stopper = EarlyStoppingCallback(early_stopping_patience=job.early_stopping_steps) \
        if job.early_stopping_steps else None
    best = BestCheckpoint(job, getattr(writer, "events", None), getattr(writer, "is_writer", True), stopper)
    return [best] + ([stopper] if stopper else [])
