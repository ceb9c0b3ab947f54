"""RoPE scaling (`rope_scaling` in a job): the from_pretrained keys that stretch a base model's positions.

Training loads the base with these keys; everything that later puts that run's LoRA adapter back on a
base (chat, the API, evaluation, merge/export, a reward model for GRPO) must load the base with the same
keys, or the adapter runs on a model whose positions are scaled differently than in training. A LoRA
adapter folder does not record it, so it is read from the run's job.yaml:

    base_arguments_for(runs/x/adapter, base_dir)   -> {"rope_parameters": {...}, "max_position_embeddings": N}
    base_arguments_for(runs/x/checkpoints/checkpoint-8, base_dir)   (the same run: the same keys)

A full fine-tuning run saves its own config.json with the scaling in it, so it needs nothing here.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from app.config import JobConfig

log = logging.getLogger(__name__)


def rope_arguments(rope_scaling: str | None, cutoff_len: int, model_dir: str | Path) -> dict[str, Any]:
    """from_pretrained keys that stretch RoPE to cutoff_len (as LLaMA-Factory: the factor is
    ceil(cutoff_len / max_position_embeddings); no scaling when the model already covers cutoff_len)."""
    if not rope_scaling:
        return {}
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    current = int(getattr(config, "max_position_embeddings", 0) or 0)
    if not current or cutoff_len <= current:
        log.warning("rope_scaling: cutoff_len %d fits the model's %d positions; no scaling", cutoff_len, current)
        return {}
    factor = float(math.ceil(cutoff_len / current))
    params = dict(getattr(config, "rope_parameters", None) or {})
    params.setdefault("rope_theta", getattr(config, "rope_theta", None) or 10000.0)
    params.update(rope_type=rope_scaling, factor=factor)
    if rope_scaling in ("dynamic", "yarn", "llama3"):
        params["original_max_position_embeddings"] = current
    if rope_scaling == "llama3":
        params.setdefault("low_freq_factor", 1.0)
        params.setdefault("high_freq_factor", 4.0)
    log.info("rope_scaling: %s x%g (%d -> %d positions)", rope_scaling, factor, current, int(current * factor))
    return {"rope_parameters": params, "max_position_embeddings": int(current * factor)}


def owning_job_file(folder: str | Path) -> Path | None:
    """The job.yaml of the run that holds `folder`: the run itself, runs/x/adapter or a checkpoint in it."""
    folder = Path(folder).expanduser().resolve()
    for candidate in (folder, folder.parent, folder.parent.parent):
        if (candidate / JobConfig.FILE_NAME).is_file():
            return candidate / JobConfig.FILE_NAME
    return None


def base_arguments_for(adapter_folder: str | Path, base_dir: str | Path) -> dict[str, Any]:
    """from_pretrained keys for the base under a run's LoRA adapter: the run's RoPE scaling, else {}."""
    job_file = owning_job_file(adapter_folder)
    if job_file is None:
        return {}
    try:
        job = JobConfig.load(job_file)
    except Exception as exc:  # noqa: BLE001 - a job.yaml of another schema must not block loading the adapter
        log.warning("%s: unreadable (%s); loading the base without the run's rope_scaling", job_file, exc)
        return {}
    return rope_arguments(job.rope_scaling, job.cutoff_len, base_dir)
