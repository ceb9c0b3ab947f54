"""The worker's memory decision once the data is tokenized: the estimate from the real row lengths, and
gradient checkpointing only when the job would not fit without it.

Gradient checkpointing recomputes each layer's forward pass during the backward pass: less memory, but
about a third more compute for full fine-tuning and up to half more for LoRA (whose backward pass is
cheap). The studio leaves it off unless the job asks for it, or unless the estimate from the tokenized
rows (app.train.memory) exceeds the memory this device has free; then it turns it on and says so.
"""

from __future__ import annotations

import logging
from pathlib import Path

from app.config import JobConfig
from app.train.memory import MemoryEstimate, estimate_memory

log = logging.getLogger(__name__)

HEADROOM = 0.9  # leave a tenth of the free memory to the allocator's slack and everything else


def training_rows(train) -> list[tuple[int, int]]:
    """(tokens, label tokens) of every tokenized training row; [] when the rows are not tokenized (DPO)."""
    if "input_ids" not in train.column_names:
        return []
    if "completion_mask" in train.column_names:
        return [(len(ids), sum(mask)) for ids, mask in zip(train["input_ids"], train["completion_mask"])]
    return [(len(ids), len(ids)) for ids in train["input_ids"]]


def free_memory_mb(on_gpu: bool) -> float:
    """What this device can still give: free GPU memory, or available RAM plus this process's own."""
    import psutil

    if on_gpu:
        import torch

        free, _ = torch.cuda.mem_get_info()
        return free / 2**20
    return (psutil.virtual_memory().available + psutil.Process().memory_info().rss) / 2**20


def plan_memory(job: JobConfig, model_dir: Path, train, on_gpu: bool,
                free_mb: float | None = None) -> tuple[JobConfig, MemoryEstimate | None, str, bool]:
    """(job to train, its estimate, a message for the user, whether checkpointing was turned on)."""
    from app.models.info import describe_model

    try:
        info = describe_model(model_dir)
        rows = training_rows(train)
        estimate = estimate_memory(info, job, on_gpu, rows=rows or None)
    except Exception as exc:  # noqa: BLE001 - an estimate never stops a run
        log.warning("memory estimate unavailable: %s", exc)
        return job, None, f"memory estimate unavailable ({type(exc).__name__}); gradient checkpointing as asked", False
    where = "from the tokenized rows" if rows else "for full-length rows"
    message = (f"memory estimate {where}: {estimate.total_mb:,.0f} MB per device "
               f"(largest batch {estimate.tokens_per_step:,} tokens)")
    if job.gradient_checkpointing:
        return job, estimate, message + "; gradient checkpointing on (asked)", False
    free_mb = free_memory_mb(on_gpu) if free_mb is None else free_mb
    if estimate.total_mb <= HEADROOM * free_mb:
        return job, estimate, message + "; gradient checkpointing off (it fits)", False
    checkpointed = job.replace(gradient_checkpointing=True)
    smaller = estimate_memory(info, checkpointed, on_gpu, rows=rows or None)
    message += (f", more than the {free_mb:,.0f} MB free: gradient checkpointing turned on "
                f"(estimate {smaller.total_mb:,.0f} MB; slower steps)")
    log.warning(message)
    return checkpointed, smaller, message, True
