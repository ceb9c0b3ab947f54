"""What a path handed to the chat engine holds: a run folder, a LoRA adapter or a full model.

    runs/<name>/            job.yaml + adapter/       (a training run; its adapter/ is what we load)
    runs/<name>/adapter/    adapter_config.json + adapter_model.safetensors + tokenizer   (LoRA)
    runs/<name>/adapter/    config.json + model.safetensors + tokenizer   (full or freeze fine-tuning)
    runs/<name>/checkpoints/checkpoint-N/   a LoRA checkpoint

Prompts are rendered with the tokenizer saved in the folder (it carries the training chat template);
a folder without one falls back to the base tokenizer with the job's `template` applied.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from app.models.source import EMBEDDED_ID, is_embedded


class AdapterError(ValueError):
    """A path is not something the engine can load; the message says what was expected."""


class BaseMismatchError(AdapterError):
    """A LoRA adapter was trained on a different base model than the one the engine holds."""


@dataclass
class AdapterSource:
    path: Path  # the folder to load: a LoRA adapter folder or a full model folder
    kind: Literal["lora", "full"]
    run: Path | None = None  # the run folder, when one was given
    trained_on: list[str] | None = None  # base model names the adapter claims (adapter_config, job.yaml)
    template: str | None = None  # the job's `template`, for adapter folders saved without a tokenizer

    @property
    def has_tokenizer(self) -> bool:
        return (self.path / "tokenizer_config.json").is_file() or (self.path / "tokenizer.json").is_file()


def _job_fields(run: Path | None) -> tuple[str | None, str | None]:
    """The job's (model_name_or_path, template); the model is "" for the embedded default, None if unknown."""
    if run is None or not (run / "job.yaml").is_file():
        return None, None
    try:
        from app.train.runfolder import RunFolder

        job = RunFolder(run).job()
    except Exception:  # a job.yaml from a newer/older schema must not block chatting with its adapter
        return None, None
    return job.model_name_or_path or "", job.template


def _owning_run(folder: Path) -> Path | None:
    """The run folder that holds runs/<name>/adapter or runs/<name>/checkpoints/checkpoint-N."""
    for parent in (folder.parent, folder.parent.parent):
        if (parent / "job.yaml").is_file():
            return parent
    return None


def _run_state(run: Path) -> str:
    try:
        return json.loads((run / "state.json").read_text(encoding="utf-8")).get("state", "unknown")
    except (OSError, json.JSONDecodeError):
        return "unknown"


def resolve_adapter(path: str | Path) -> AdapterSource:
    """Classify a run folder, an adapter folder or a full model folder."""
    given = Path(path).expanduser()
    if not given.exists():
        raise AdapterError(f"'{path}' does not exist: give a run folder (runs/<name>) or an adapter folder.")
    run: Path | None = None
    folder = given
    if not (given / "adapter_config.json").is_file() and not (given / "config.json").is_file():
        if (given / "adapter").is_dir():
            run, folder = given, given / "adapter"
        elif (given / "job.yaml").is_file():
            raise AdapterError(f"Run '{given.name}' has no adapter/ yet (state: {_run_state(given)}); "
                               "wait for training to finish, or pick one of its checkpoints/.")
        else:
            raise AdapterError(f"'{path}' is neither a run folder (job.yaml + adapter/), a LoRA adapter "
                               "folder (adapter_config.json) nor a model folder (config.json).")
    folder = folder.resolve()
    run = run.resolve() if run else _owning_run(folder)
    job_model, template = _job_fields(run)
    if (folder / "adapter_config.json").is_file():
        claimed = []
        config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
        if config.get("base_model_name_or_path"):
            claimed.append(str(config["base_model_name_or_path"]))
        if job_model is not None:
            claimed.append(job_model)
        return AdapterSource(folder, "lora", run, claimed or None, template)
    if (folder / "config.json").is_file():
        return AdapterSource(folder, "full", run, None, template)
    raise AdapterError(f"'{folder}' holds neither adapter_config.json (LoRA) nor config.json (full model).")


def _names_of(name_or_path: str) -> set[str]:
    """Comparable spellings of a model reference: the full text, the resolved path, the last part."""
    text = name_or_path.strip()
    names = {text.lower(), text.rstrip("/").split("/")[-1].lower()}
    path = Path(text).expanduser()
    if path.exists():
        names.add(str(path.resolve()).lower())
    if is_embedded(text):
        names.add(EMBEDDED_ID.lower())
    return names - {""}


def base_matches(source: AdapterSource, base_path: Path, base_model: str | None) -> bool:
    """Whether the adapter's recorded base is the engine's base (unknown counts as a match).

    The worker trains on the folder that `resolve_model_path` returned, so adapter_config usually holds
    that absolute path; job.yaml holds what the user typed (a hub id, a folder, or nothing = embedded).
    """
    if not source.trained_on:
        return True
    ours = _names_of(str(base_path)) | {str(base_path.resolve()).lower()}
    if base_model is not None:
        ours |= _names_of(base_model)
    if is_embedded(base_model):
        ours.add(EMBEDDED_ID.lower())
    return any(_names_of(claim) & ours for claim in source.trained_on)
