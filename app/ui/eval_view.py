"""The Evaluate tab's logic without gradio: which model a form names, a run's status line, checkpoint choices.

Model sources:
    base    the Model tab's model (model_name_or_path), no adapter
    run     a finished training run: its final adapter, or one of its checkpoints (the best one marked)
    path    a folder or file: a merged export or model folder, a .gguf file, or an adapter / run folder
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.config import EvalConfig
from app.eval.loading import is_gguf
from app.train.runfolder import RunFolder

SOURCES = ("base", "run", "path")
FINAL = "final"


def best_step(events: list[dict[str, Any]]) -> int | None:
    """The step of the run's best checkpoint (the newest `best` event), if it reported one."""
    best = [e for e in events if e.get("kind") == "best"]
    return best[-1].get("step") if best else None


def checkpoint_choices(run: RunFolder) -> list[tuple[str, str]]:
    """(label, value) pairs: the final adapter, then each complete checkpoint, the best one starred."""
    best = best_step(run.events.read_all())
    choices = [("final adapter", FINAL)]
    for folder in run.complete_checkpoints():
        step = int(folder.name.split("-")[-1])
        choices.append((f"{folder.name} ★ best eval loss" if step == best else folder.name, folder.name))
    return choices


def model_keys(source: str, base_model: str | None, runs_dir: Path, run: str | None, checkpoint: str | None,
               path: str | None) -> dict[str, Any]:
    """EvalConfig keys for what the form's model picker names; ValueError says what is missing."""
    if source == "base":
        return {"model_name_or_path": base_model, "adapter_name_or_path": None}
    if source == "run":
        if not run:
            raise ValueError("adapter_name_or_path: pick a finished training run")
        folder = runs_dir / run
        if checkpoint and checkpoint != FINAL:
            folder = folder / "checkpoints" / checkpoint
        return {"model_name_or_path": None, "adapter_name_or_path": str(folder)}
    given = (path or "").strip()
    if not given:
        raise ValueError("model_name_or_path: enter a model folder, an export, a .gguf file or a run folder")
    where = Path(given).expanduser()
    is_adapter = any((where / f).exists() for f in ("adapter_config.json", "job.yaml", "adapter"))
    if is_adapter and not is_gguf(given):
        return {"model_name_or_path": base_model, "adapter_name_or_path": given}
    return {"model_name_or_path": given, "adapter_name_or_path": None}


def build_config(model: dict[str, Any], datasets: list[str] | str | None, values: dict[str, Any],
                 dataset_dir: Path, runs_dir: Path, name: str | None) -> EvalConfig:
    """The EvalConfig the form describes (ConfigError lists every problem)."""
    chosen = [datasets] if isinstance(datasets, str) else list(datasets or [])
    data: dict[str, Any] = {key: value for key, value in values.items() if value not in ("", None)}
    data |= {"eval_dataset": ",".join(chosen) or None, "dataset_dir": str(dataset_dir)} | model
    for key in ("max_samples", "max_new_tokens", "per_device_eval_batch_size", "cutoff_len", "seed"):
        if isinstance(data.get(key), float) and data[key].is_integer():
            data[key] = int(data[key])
    name = (name or "").strip()
    if name:
        if "/" in name or name in (".", ".."):
            raise ValueError("output_dir: a run name, without '/'")
        data["output_dir"] = str(runs_dir / name)
    return EvalConfig.from_dict(data).with_run_folder(runs_dir)


def column_width(column: str) -> str:
    """Width of a predictions-table column: numbers narrow, texts wide."""
    if column in ("index", "gain") or column.endswith("ROUGE-L"):
        return "90px"
    return "260px" if column in ("question", "reference") else "320px"


def status_line(run: RunFolder) -> str:
    """state · stage · progress · speed · ETA (Markdown) of an evaluation run, from its files."""
    state = run.read_state().get("state", "?")
    events = run.events.read_all()
    done = next((e for e in reversed(events) if e.get("kind") == "done"), None)
    if done and state in ("running", "queued"):
        state = done.get("state", state)
    parts = [f"**{run.name}**: **{state}**"]
    stage = next((e for e in reversed(events) if e.get("kind") == "stage"), None)
    if stage and state in ("running", "queued"):
        parts.append(str(stage.get("message", "")))
    progress = next((e for e in reversed(events) if e.get("kind") == "progress"), None)
    if progress and state == "running":
        parts.append(f"{progress.get('phase')} {progress.get('done')}/{progress.get('total')}")
        if progress.get("samples_per_s"):
            parts.append(f"{progress['samples_per_s']:.2f} samples/s")
        if progress.get("eta_s") is not None:
            parts.append(f"ETA {int(progress['eta_s'])} s")
    error = (done or {}).get("error") or run.read_state().get("error")
    if state == "failed" and error:
        parts.append(f"error: {error}")
    return " · ".join(parts)


def results_line(results: dict[str, Any]) -> str:
    """The headline scores of a finished evaluation (Markdown)."""
    keys = [("BLEU-4", "predict_bleu-4"), ("ROUGE-1", "predict_rouge-1"), ("ROUGE-2", "predict_rouge-2"),
            ("ROUGE-L", "predict_rouge-l"), ("eval loss", "eval_loss"), ("perplexity", "perplexity"),
            ("samples/s", "predict_samples_per_second")]
    shown = [f"{title} **{results[key]:.2f}**" for title, key in keys if isinstance(results.get(key), (int, float))]
    return " · ".join(shown)
